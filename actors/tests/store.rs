//! One test suite, both stores: SQLite always, PostgreSQL when `SWITCHBOARD_TEST_POSTGRES_URL`
//! is set (`.ci/run` sets it). Each PostgreSQL test uses its own schema.

use std::sync::Arc;

use switchboard_actors::store::{Accepted, InboxStatus, NewInbound, SqlStore, Store, Turn, verify_chain};

struct Db {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

async fn sqlite() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::sqlite(&dir.path().join("sub/switchboard.db")).await.unwrap();
    Db { store: Arc::new(store), _dir: Some(dir) }
}

async fn postgres(test: &str) -> Option<Db> {
    let url = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty())?;
    let schema = format!("t_{}_{}", test, std::process::id());
    // Start from an empty schema.
    let admin = SqlStore::postgres(&url, "public").await.expect("connect to SWITCHBOARD_TEST_POSTGRES_URL");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).execute(admin.pool()).await.unwrap();
    let store = SqlStore::postgres(&url, &schema).await.unwrap();
    Some(Db { store: Arc::new(store), _dir: None })
}

fn inbound(conv: &str, text: &str, dedup: Option<&str>) -> NewInbound {
    NewInbound {
        platform: "http".into(),
        account: "api".into(),
        dedup_key: dedup.map(str::to_string),
        conversation: conv.into(),
        user: "alice".into(),
        text: text.into(),
        payload: "{}".into(),
    }
}

async fn inbox_dedup_and_replay_order(s: &dyn Store) {
    let a = s.inbox_accept(&inbound("c1", "first", Some("m-1")), "node-a").await.unwrap();
    let Accepted::New(a) = a else { panic!("first insert must be new") };
    assert_eq!(s.inbox_accept(&inbound("c1", "first again", Some("m-1")), "node-a").await.unwrap(), Accepted::Duplicate(a));
    let Accepted::New(b) = s.inbox_accept(&inbound("c1", "second", None), "node-a").await.unwrap() else { panic!() };
    let Accepted::New(_) = s.inbox_accept(&inbound("c2", "other node", None), "node-b").await.unwrap() else { panic!() };
    let Accepted::New(_) = s.inbox_accept(&inbound("c1", "no dedup key twice", None), "node-a").await.unwrap() else { panic!() };
    let pending = s.inbox_pending("node-a").await.unwrap();
    assert_eq!(pending.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["first", "second", "no dedup key twice"]);
    assert_eq!(s.inbox_depth().await.unwrap(), 4);
    s.inbox_finish(a, InboxStatus::Done, None).await.unwrap();
    s.inbox_attempt_failed(b, 1, "boom").await.unwrap();
    let pending = s.inbox_pending("node-a").await.unwrap();
    assert_eq!(pending[0].id, b);
    assert_eq!(pending[0].attempts, 1);
    // Rows of a vanished node are taken over once they are stale.
    let Accepted::New(o) = s.inbox_accept(&inbound("c3", "orphan", None), "node-gone").await.unwrap() else { panic!() };
    assert!(s.inbox_claim_orphans("node-a", 60_000).await.unwrap().is_empty(), "not stale yet");
    let claimed = s.inbox_claim_orphans("node-a", -1).await.unwrap();
    assert!(claimed.iter().any(|e| e.id == o), "{claimed:?}");
    assert!(s.inbox_pending("node-a").await.unwrap().iter().any(|e| e.id == o));
    // De-duplication outlives the row's processing.
    assert_eq!(s.inbox_accept(&inbound("c1", "late duplicate", Some("m-1")), "node-a").await.unwrap(), Accepted::Duplicate(a));
}

async fn dead_letters_and_replay(s: &dyn Store) {
    let Accepted::New(id) = s.inbox_accept(&inbound("c9", "poison", Some("p-1")), "n").await.unwrap() else { panic!() };
    let entry = s.inbox_pending("n").await.unwrap().into_iter().find(|e| e.id == id).unwrap();
    let dl = s.dead_letter(&entry, "worker failed twice").await.unwrap();
    assert!(s.inbox_pending("n").await.unwrap().iter().all(|e| e.id != id), "a dead letter is no longer pending");
    assert_eq!(s.dead_letter_count().await.unwrap(), 1);
    let list = s.dead_letters(10).await.unwrap();
    assert_eq!(list[0].id, dl);
    assert_eq!(list[0].error, "worker failed twice");
    assert_eq!(list[0].text, "poison");
    let replayed = s.replay_dead_letter(dl, "n").await.unwrap().expect("replayable");
    assert_eq!(replayed.text, "poison");
    assert_ne!(replayed.id, id);
    assert_eq!(s.dead_letter_count().await.unwrap(), 0);
    assert!(s.replay_dead_letter(dl, "n").await.unwrap().is_none(), "a dead letter is replayed once");
    assert!(s.replay_dead_letter(9999, "n").await.unwrap().is_none());
    assert!(s.inbox_pending("n").await.unwrap().iter().any(|e| e.id == replayed.id));
}

async fn history_reset_and_erase(s: &dyn Store) {
    let t = |role, content: &str| Turn { role, user: "alice".into(), content: content.into() };
    s.save_turns("http:c1", "h1", "http", &[t("user", "hi"), t("assistant", "hello")]).await.unwrap();
    s.save_turns("http:c1", "h1", "http", &[t("user", "how are you"), t("assistant", "fine")]).await.unwrap();
    s.save_turns("telegram:bot:42", "h2", "telegram", &[t("user", "yo"), t("assistant", "hey")]).await.unwrap();
    let h = s.history("http:c1", 3).await.unwrap();
    assert_eq!(h.iter().map(|m| m.content.as_str()).collect::<Vec<_>>(), ["hello", "how are you", "fine"]);
    s.reset("http:c1", "h1", "http").await.unwrap();
    assert!(s.history("http:c1", 10).await.unwrap().is_empty(), "reset starts a fresh context");
    s.save_turns("http:c1", "h1", "http", &[t("user", "again"), t("assistant", "yes")]).await.unwrap();
    assert_eq!(s.history("http:c1", 10).await.unwrap().len(), 2);
    let all = s.messages("http:c1", 100).await.unwrap();
    assert_eq!(all.len(), 6, "older epochs are kept for audit");
    assert_eq!(all[0].epoch, 0);
    assert_eq!(all[5].epoch, 1);
    let convs = s.conversations(Some("telegram"), 10).await.unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].messages, 2);
    assert_eq!(s.conversations(None, 10).await.unwrap().len(), 2);
    assert_eq!(s.conversation("h1").await.unwrap().unwrap().key, "http:c1", "found by hash");
    assert_eq!(s.conversation("http:c1").await.unwrap().unwrap().epoch, 1);
    let Accepted::New(_) = s.inbox_accept(&inbound("http:c1", "pending one", None), "n").await.unwrap() else { panic!() };
    assert!(s.erase("http:c1").await.unwrap() >= 7);
    assert!(s.conversation("http:c1").await.unwrap().is_none());
    assert!(s.messages("http:c1", 100).await.unwrap().is_empty());
    assert!(s.inbox_pending("n").await.unwrap().iter().all(|e| e.conversation != "http:c1"));
    assert_eq!(s.conversations(None, 10).await.unwrap().len(), 1);
}

async fn audit_chain(s: &dyn Store) {
    for i in 0..5 {
        s.audit_append("ops", "admin.dead_letters.replay", &i.to_string(), "detail").await.unwrap();
    }
    let records = s.audit_records().await.unwrap();
    assert_eq!(verify_chain(&records), Ok(5));
    let mut edited = records.clone();
    edited[2].target = "99".into();
    assert!(verify_chain(&edited).is_err());
}

macro_rules! both {
    ($($name:ident),*) => {
        mod on_sqlite {
            $(#[tokio::test] async fn $name() { let db = super::sqlite().await; super::$name(&*db.store).await; })*
        }
        mod on_postgres {
            $(#[tokio::test] async fn $name() {
                match super::postgres(stringify!($name)).await {
                    Some(db) => super::$name(&*db.store).await,
                    None => eprintln!("SWITCHBOARD_TEST_POSTGRES_URL not set; PostgreSQL test skipped"),
                }
            })*
        }
    };
}

both!(inbox_dedup_and_replay_order, dead_letters_and_replay, history_reset_and_erase, audit_chain);
