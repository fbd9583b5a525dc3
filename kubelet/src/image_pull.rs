//! What the pod workers share and keep about image pulls, as upstream's
//! image manager: a limit on pulls running at once (upstream's
//! `serializeImagePulls`, on by default, and `maxParallelImagePulls`), and
//! per pod a back-off per image after a failed pull (10 s, doubling to
//! 5 min), during which the container waits in `ImagePullBackOff`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The first delay after a failed pull.
pub const PULL_BACKOFF_INITIAL: Duration = Duration::from_secs(10);
/// The longest delay.
pub const PULL_BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Errors of this module.
#[derive(Debug, Error)]
pub enum ImagePullError {
    /// Both knobs set, as upstream's config validation refuses.
    #[error(
        "maxParallelImagePulls {0} needs serializeImagePulls off: serialized pulls are one at a time"
    )]
    SerializedParallel(usize),
    /// A limit that would let no pull run.
    #[error("maxParallelImagePulls must be at least 1, not 0")]
    Zero,
}

/// How many pulls may run at once, shared by every pod worker.
#[derive(Clone, Debug)]
pub struct PullLimiter {
    /// `None`: no limit.
    permits: Option<Arc<Semaphore>>,
}

impl Default for PullLimiter {
    /// Upstream's default: serialized.
    fn default() -> Self {
        Self {
            permits: Some(Arc::new(Semaphore::new(1))),
        }
    }
}

impl PullLimiter {
    /// One pull at a time when `serialize`; else at most `max_parallel`,
    /// or any number without it.
    pub fn new(serialize: bool, max_parallel: Option<usize>) -> Result<Self, ImagePullError> {
        let limit = match (serialize, max_parallel) {
            (_, Some(0)) => return Err(ImagePullError::Zero),
            (true, Some(n)) if n > 1 => return Err(ImagePullError::SerializedParallel(n)),
            (true, _) => Some(1),
            (false, n) => n,
        };
        Ok(Self {
            permits: limit.map(|n| Arc::new(Semaphore::new(n))),
        })
    }

    /// Waits for a pull's turn; the pull holds the permit while it runs.
    pub async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed, so acquiring cannot fail.
        self.permits.clone()?.acquire_owned().await.ok()
    }
}

/// One pod's back-off of failed pulls, by image.
#[derive(Clone, Debug, Default)]
pub struct PullBackoff {
    /// The current delay and when the last pull failed.
    failed: HashMap<String, (Duration, Instant)>,
}

impl PullBackoff {
    /// How long `image` must still wait at `now`; `None` when it may be
    /// pulled.
    pub fn remaining(&self, image: &str, now: Instant) -> Option<Duration> {
        let (delay, at) = self.failed.get(image)?;
        delay
            .checked_sub(now.saturating_duration_since(*at))
            .filter(|d| !d.is_zero())
    }

    /// Records a failed pull of `image` at `now`: the next waits 10 s, then
    /// twice the last delay up to 5 min; a failure long after the last
    /// (twice the longest delay, as upstream's back-off expiry) starts over.
    pub fn failed(&mut self, image: &str, now: Instant) {
        let delay = match self.failed.get(image) {
            Some((d, at)) if now.saturating_duration_since(*at) <= 2 * PULL_BACKOFF_MAX => {
                (*d * 2).min(PULL_BACKOFF_MAX)
            }
            _ => PULL_BACKOFF_INITIAL,
        };
        self.failed.insert(image.to_owned(), (delay, now));
    }

    /// Forgets `image`'s failures after it was pulled.
    pub fn succeeded(&mut self, image: &str) {
        self.failed.remove(image);
    }
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::*;

    #[test]
    fn back_off_doubles_to_five_minutes_and_forgets_on_success() {
        let t0 = Instant::now();
        let mut b = PullBackoff::default();
        assert_eq!(b.remaining("img", t0), None);
        b.failed("img", t0);
        assert_eq!(b.remaining("img", t0), Some(Duration::from_secs(10)));
        assert_eq!(
            b.remaining("img", t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(b.remaining("img", t0 + Duration::from_secs(10)), None);
        assert_eq!(b.remaining("other", t0), None);
        let mut at = t0;
        for expected in [20, 40, 80, 160, 300, 300] {
            at += Duration::from_secs(expected);
            b.failed("img", at);
            assert_eq!(b.remaining("img", at), Some(Duration::from_secs(expected)));
        }
        b.succeeded("img");
        assert_eq!(b.remaining("img", at), None);
    }

    #[test]
    fn a_failure_long_after_the_last_starts_over() {
        let t0 = Instant::now();
        let mut b = PullBackoff::default();
        b.failed("img", t0);
        b.failed("img", t0 + Duration::from_secs(10));
        let later = t0 + Duration::from_secs(10 + 601);
        b.failed("img", later);
        assert_eq!(b.remaining("img", later), Some(PULL_BACKOFF_INITIAL));
    }

    #[rstest]
    #[case(true, None, Some(1))]
    #[case(true, Some(1), Some(1))]
    #[case(false, Some(3), Some(3))]
    #[case(false, None, None)]
    fn limits(#[case] serialize: bool, #[case] max: Option<usize>, #[case] permits: Option<usize>) {
        let l = PullLimiter::new(serialize, max).unwrap();
        assert_eq!(l.permits.as_ref().map(|s| s.available_permits()), permits);
    }

    #[test]
    fn contradictory_limits_are_refused() {
        assert!(matches!(
            PullLimiter::new(true, Some(2)),
            Err(ImagePullError::SerializedParallel(2))
        ));
        assert!(matches!(
            PullLimiter::new(false, Some(0)),
            Err(ImagePullError::Zero)
        ));
    }

    #[tokio::test]
    async fn serialized_pulls_wait_for_each_other() {
        let l = PullLimiter::default();
        let first = l.acquire().await;
        assert!(first.is_some());
        let waiting = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(waiting.is_err(), "a second pull ran beside the first");
        drop(first);
        assert!(l.acquire().await.is_some());
        assert!(
            PullLimiter::new(false, None)
                .unwrap()
                .acquire()
                .await
                .is_none()
        );
    }
}
