//! A single-flight cache for the tenant access token (PROTOCOLS §2.2).
//!
//! The fetch itself is injected, so the caching and single-flight logic is tested here
//! without HTTP; [`super::api::FeishuApi`] plugs in the real request.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::time::Instant;

use super::error::FsError;

/// Tokens are used until `expire - EXPIRY_MARGIN`, like the official SDK (`expiryDelta`).
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(180);

/// A fetched token and how long it remains valid, as the platform reported it.
#[derive(Clone)]
pub struct FetchedToken {
    /// The token (`t-…`).
    pub token: String,
    /// Remaining lifetime in seconds (`expire`).
    pub expire_secs: u64,
}

struct Cached {
    token: String,
    valid_until: Instant,
}

/// Caches one token; concurrent callers that find it stale share one refresh.
pub struct TokenCache {
    /// The current token, read on the fast path without waiting on a refresh.
    slot: Mutex<Option<Cached>>,
    /// Held for the whole refresh, so only one fetch runs at a time.
    refresh: tokio::sync::Mutex<()>,
    /// How many fetches have succeeded (for tests and metrics).
    refreshes: AtomicU64,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("token", &"<redacted>").field("refreshes", &self.refreshes()).finish()
    }
}

impl TokenCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self { slot: Mutex::new(None), refresh: tokio::sync::Mutex::new(()), refreshes: AtomicU64::new(0) }
    }

    /// The cached token, if still within its validity window.
    #[cfg(test)]
    fn current(&self) -> Option<String> {
        self.current_at(Instant::now())
    }

    /// The cached token if still valid at `now`.
    pub fn current_at(&self, now: Instant) -> Option<String> {
        let slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().filter(|c| now < c.valid_until).map(|c| c.token.clone())
    }

    /// Returns the cached token or runs `fetch` to get a new one. While one caller fetches,
    /// the others wait and then reuse its result (they re-check the cache after the lock).
    /// A failed fetch is not cached; the next waiter tries again.
    pub async fn get_or_refresh<F, Fut>(&self, fetch: F) -> Result<String, FsError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedToken, FsError>>,
    {
        self.get_or_refresh_with_clock(Instant::now, fetch).await
    }

    /// [`TokenCache::get_or_refresh`] with an injected clock (for tests).
    pub async fn get_or_refresh_with_clock<C, F, Fut>(&self, now: C, fetch: F) -> Result<String, FsError>
    where
        C: Fn() -> Instant,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<FetchedToken, FsError>>,
    {
        if let Some(token) = self.current_at(now()) {
            return Ok(token);
        }
        let _guard = self.refresh.lock().await;
        if let Some(token) = self.current_at(now()) {
            return Ok(token);
        }
        let fetched = fetch().await?;
        let lifetime = Duration::from_secs(fetched.expire_secs).saturating_sub(EXPIRY_MARGIN);
        let valid_until = now() + lifetime;
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Cached { token: fetched.token.clone(), valid_until });
        Ok(fetched.token)
    }

    /// Drops the cached token only if it is `token`, so that many callers reporting the same
    /// rejected token cause one refresh, not one each.
    pub fn invalidate_if(&self, token: &str) {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if slot.as_ref().is_some_and(|c| c.token == token) {
            *slot = None;
        }
    }

    /// How many fetches have succeeded.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;

    fn fetcher(
        calls: Arc<AtomicUsize>,
        expire_secs: u64,
    ) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<FetchedToken, FsError>> + Send>> {
        move || {
            Box::pin(async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(FetchedToken { token: format!("t-{n}"), expire_secs })
            })
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_refresh() {
        let cache = Arc::new(TokenCache::new());
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let cache = cache.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move { cache.get_or_refresh(fetcher(calls, 7200)).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "t-1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.refreshes(), 1);
    }

    #[tokio::test]
    async fn token_is_reused_until_expiry_margin() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let at = |secs: u64| move || t0 + Duration::from_secs(secs);
        let get = |secs| cache.get_or_refresh_with_clock(at(secs), fetcher(calls.clone(), 7200));
        assert_eq!(get(0).await.unwrap(), "t-1");
        assert_eq!(get(7200 - 181).await.unwrap(), "t-1");
        assert_eq!(get(7200 - 179).await.unwrap(), "t-2");
        assert_eq!(cache.refreshes(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn invalidate_if_only_drops_the_named_token() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicUsize::new(0));
        cache.get_or_refresh(fetcher(calls.clone(), 7200)).await.unwrap();
        cache.invalidate_if("t-other");
        assert_eq!(cache.current().as_deref(), Some("t-1"));
        cache.invalidate_if("t-1");
        assert_eq!(cache.current(), None);
        assert_eq!(cache.get_or_refresh(fetcher(calls.clone(), 7200)).await.unwrap(), "t-2");
    }

    #[tokio::test]
    async fn failed_fetch_is_not_cached() {
        let cache = TokenCache::new();
        let err = cache.get_or_refresh(|| async { Err(FsError::Transient("down".into())) }).await;
        assert_eq!(err, Err(FsError::Transient("down".into())));
        assert_eq!(cache.refreshes(), 0);
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.get_or_refresh(fetcher(calls, 7200)).await.unwrap(), "t-1");
    }

    #[tokio::test]
    async fn short_lived_token_is_returned_but_not_cached() {
        let cache = TokenCache::new();
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(cache.get_or_refresh(fetcher(calls.clone(), 60)).await.unwrap(), "t-1");
        assert_eq!(cache.current(), None);
    }

    #[test]
    fn debug_hides_the_token() {
        let s = format!("{:?}", TokenCache::new());
        assert!(s.contains("redacted"));
    }
}
