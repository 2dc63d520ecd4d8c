//! One item's purchase tokens: the live ones by value, and when each expires.
//!
//! api.md bounds the tokens *outstanding* (unexpired and unused), not the tokens ever issued:
//! a token that is used or expires frees its place. The book therefore forgets a token the
//! moment it is used, and forgets expired ones when its owner asks (`forget_expired`, which
//! the shard calls before every token decision and on every expiry tick), so
//! [`TokenBook::outstanding`] is exact and memory holds only live tokens.
//!
//! Forgetting changes no decision: a used, an expired and an unknown token are all refused
//! alike (`token_invalid`), and a user whose token is gone simply gets a new one.
//!
//! On disk (snapshots) the book is the map alone, as version 1 wrote it; the expiry queue
//! and the count are rebuilt when it is read.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A purchase token as the item remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user_id: String,
    pub expires_at_ms: i64,
    /// Always false for tokens this build keeps (used ones are forgotten); version 1
    /// snapshots may hold used ones until they expire.
    pub used: bool,
}

/// The live tokens of one item.
#[derive(Debug, Clone, Default)]
pub struct TokenBook {
    records: FxHashMap<String, TokenRecord>,
    /// (expires_at_ms, token) of every record kept, soonest first.
    expiries: BTreeSet<(i64, String)>,
    /// Records not used: unexpired ones, plus expired ones not forgotten yet.
    unused: u64,
}

impl TokenBook {
    pub fn get(&self, token: &str) -> Option<&TokenRecord> {
        self.records.get(token)
    }

    /// Tokens kept (live ones, and expired ones not forgotten yet).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Tokens unused and, once `forget_expired(now)` ran, unexpired at `now`.
    pub fn outstanding(&self) -> u64 {
        self.unused
    }

    /// Keeps a newly issued token.
    pub fn issue(&mut self, token: String, record: TokenRecord) {
        let expires_at_ms = record.expires_at_ms;
        if !record.used {
            self.unused += 1;
        }
        if let Some(previous) = self.records.insert(token.clone(), record) {
            // Tokens are 128 random bits; a repeat would be a broken generator.
            debug_assert!(false, "token issued twice");
            self.expiries
                .remove(&(previous.expires_at_ms, token.clone()));
            if !previous.used {
                self.unused -= 1;
            }
        }
        self.expiries.insert((expires_at_ms, token));
    }

    /// A purchase used `token`: it frees its place at once.
    pub fn consume(&mut self, token: &str) {
        self.forget(token);
    }

    /// Takes back the live token that expires last (the newest), for the item to keep at
    /// most its cap outstanding when stock goes; `revoked(user_id, token)` as for expiry.
    pub fn revoke_newest(&mut self, mut revoked: impl FnMut(&str, &str)) -> bool {
        let newest = self
            .expiries
            .iter()
            .rev()
            .find(|(_, token)| self.records.get(token).is_some_and(|r| !r.used))
            .map(|(_, token)| token.clone());
        let Some(token) = newest else { return false };
        if let Some(record) = self.forget(&token) {
            revoked(&record.user_id, &token);
        }
        true
    }

    /// Removes `token` from the book.
    fn forget(&mut self, token: &str) -> Option<TokenRecord> {
        let record = self.records.remove(token)?;
        self.expiries
            .remove(&(record.expires_at_ms, token.to_owned()));
        if !record.used {
            self.unused -= 1;
        }
        Some(record)
    }

    /// Forgets every token that expired by `now_ms`; `forgotten(user_id, token)` is called
    /// for each, so the item can drop what pointed at it.
    pub fn forget_expired(&mut self, now_ms: i64, mut forgotten: impl FnMut(&str, &str)) {
        while let Some((expires_at_ms, _)) = self.expiries.first() {
            if *expires_at_ms > now_ms {
                break;
            }
            let Some((_, token)) = self.expiries.pop_first() else {
                break;
            };
            if let Some(record) = self.records.remove(&token) {
                if !record.used {
                    self.unused -= 1;
                }
                forgotten(&record.user_id, &token);
            }
        }
    }

    fn from_records(records: FxHashMap<String, TokenRecord>) -> Self {
        let expiries = records
            .iter()
            .map(|(token, record)| (record.expires_at_ms, token.clone()))
            .collect();
        let unused = records.values().filter(|record| !record.used).count() as u64;
        TokenBook {
            records,
            expiries,
            unused,
        }
    }
}

impl PartialEq for TokenBook {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

impl Eq for TokenBook {}

impl Serialize for TokenBook {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.records.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for TokenBook {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        FxHashMap::<String, TokenRecord>::deserialize(deserializer).map(TokenBook::from_records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(user: &str, expires_at_ms: i64) -> TokenRecord {
        TokenRecord {
            user_id: user.into(),
            expires_at_ms,
            used: false,
        }
    }

    #[test]
    fn used_and_expired_tokens_free_their_place() {
        let mut book = TokenBook::default();
        book.issue("a".into(), record("alice", 100));
        book.issue("b".into(), record("bob", 200));
        book.issue("c".into(), record("carol", 300));
        assert_eq!(book.outstanding(), 3);
        book.consume("a");
        assert_eq!(book.outstanding(), 2);
        assert!(book.get("a").is_none());
        let mut gone = Vec::new();
        book.forget_expired(200, |user, token| {
            gone.push((user.to_owned(), token.to_owned()))
        });
        assert_eq!(gone, vec![("bob".to_owned(), "b".to_owned())]);
        assert_eq!(book.outstanding(), 1);
        assert_eq!(book.len(), 1);
        book.forget_expired(1_000, |_, _| {});
        assert!(book.is_empty());
        assert_eq!(book.outstanding(), 0);
    }

    #[test]
    fn the_book_round_trips_as_the_version_1_map() {
        let mut book = TokenBook::default();
        book.issue("t1".into(), record("u", 50));
        let mut legacy = FxHashMap::default();
        legacy.insert("t1".to_owned(), record("u", 50));
        legacy.insert(
            "t0".to_owned(),
            TokenRecord {
                used: true,
                ..record("v", 40)
            },
        );
        let json = serde_json::to_string(&legacy).expect("encode");
        let mut read: TokenBook = serde_json::from_str(&json).expect("decode");
        assert_eq!(
            read.outstanding(),
            1,
            "the used legacy token is not outstanding"
        );
        read.forget_expired(45, |_, _| {});
        assert_eq!(read, book);
        assert_eq!(
            serde_json::to_string(&book).expect("encode"),
            r#"{"t1":{"user_id":"u","expires_at_ms":50,"used":false}}"#
        );
    }
}
