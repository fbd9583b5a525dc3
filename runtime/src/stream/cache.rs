//! Pending streaming requests, each under a random single-use token that
//! expires, as upstream's request cache: the URL the CRI call returns is the
//! only credential the client needs, so tokens are unguessable and short-lived.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use berth_proto::v1::{AttachRequest, ExecRequest, PortForwardRequest};

/// Upstream's limit on requests handed out but not yet used.
pub(crate) const MAX_IN_FLIGHT: usize = 1000;

/// Errors of the request cache.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("too many streaming requests in flight ({MAX_IN_FLIGHT}); retry later")]
    Full,
    #[error("no randomness for a streaming token: {0}")]
    Random(String),
}

/// A stored request.
#[derive(Debug, Clone, PartialEq)]
pub enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

pub(crate) struct RequestCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl RequestCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Pending)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `req` and returns its token.
    pub fn insert(&self, req: Pending) -> Result<String, CacheError> {
        let now = Instant::now();
        let mut entries = self.entries();
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= MAX_IN_FLIGHT {
            return Err(CacheError::Full);
        }
        let token = loop {
            let t = new_token()?;
            if !entries.contains_key(&t) {
                break t;
            }
        };
        entries.insert(token.clone(), (now + self.ttl, req));
        Ok(token)
    }

    /// Takes the request stored under `token` if it has not expired; a
    /// token works once.
    pub fn consume(&self, token: &str) -> Option<Pending> {
        let (expires, req) = self.entries().remove(token)?;
        (expires > Instant::now()).then_some(req)
    }
}

/// 16 random bytes, URL-safe base64 (22 characters): more than upstream's
/// 8, and still short in a URL.
fn new_token() -> Result<String, CacheError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| CacheError::Random(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec(ExecRequest {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn tokens_are_single_use() {
        let c = RequestCache::new(Duration::from_secs(60));
        let t = c.insert(exec()).unwrap();
        assert_eq!(t.len(), 22);
        assert_eq!(c.consume(&t), Some(exec()));
        assert_eq!(c.consume(&t), None);
        assert_eq!(c.consume("nope"), None);
    }

    #[test]
    fn tokens_expire() {
        let c = RequestCache::new(Duration::from_millis(1));
        let t = c.insert(exec()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.consume(&t), None);
    }

    #[test]
    fn in_flight_requests_are_bounded_and_expired_ones_make_room() {
        let c = RequestCache::new(Duration::from_millis(30));
        for _ in 0..MAX_IN_FLIGHT {
            c.insert(exec()).unwrap();
        }
        assert!(matches!(c.insert(exec()), Err(CacheError::Full)));
        std::thread::sleep(Duration::from_millis(40));
        c.insert(exec()).unwrap();
    }

    #[test]
    fn tokens_differ() {
        let c = RequestCache::new(Duration::from_secs(60));
        let a = c.insert(exec()).unwrap();
        let b = c.insert(exec()).unwrap();
        assert_ne!(a, b);
    }
}
