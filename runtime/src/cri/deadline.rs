//! A client's gRPC deadline (`grpc-timeout`) answered as `DEADLINE_EXCEEDED`.
//!
//! tonic's server enforces `grpc-timeout` itself, but answers `CANCELLED`
//! ("Timeout expired"). The gRPC C and Go servers (containerd, CRI-O) answer
//! `DEADLINE_EXCEEDED`, and so the CRI's clients expect: critest's "public
//! image should timeout if requested" spec pulls with a 1 ms deadline and
//! requires that code. Usually the client's own timer fires first and makes
//! the code itself, but on a loaded node the server's answer arrives first.
//!
//! [`DeadlineLayer`] goes inside tonic's timeout (`Server::layer`) and arms a
//! timer for the same header in `call`, which tonic's timeout runs before
//! arming its own. Ours therefore expires no later than tonic's; tonic polls
//! the service inside first, so our answer is the one the client gets.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

/// The request header a gRPC client puts its deadline in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Wraps the CRI services; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let timeout = req.headers().get(GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        // Armed now, not at the first poll: the deadline must not end up
        // later than the one tonic arms right after this returns.
        let timer = timeout.map(tokio::time::sleep);
        let method = req.uri().path().to_owned();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let Some(timer) = timer else {
                return fut.await;
            };
            tokio::select! {
                // An answer ready in the same poll as the deadline wins.
                biased;
                r = fut => r,
                () = timer => {
                    tracing::debug!(%method, ?timeout, "client deadline exceeded");
                    Ok(tonic::Status::deadline_exceeded("deadline exceeded").into_http())
                }
            }
        })
    }
}

/// `grpc-timeout`: 1 to 8 ASCII digits and a unit (H, M, S, m, u, n), as the
/// gRPC over HTTP/2 spec writes it. Anything else is no deadline, as tonic
/// treats it.
fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn parse(s: &str) -> Option<Duration> {
        parse_grpc_timeout(&HeaderValue::from_str(s).unwrap())
    }

    #[test]
    fn parses_the_specs_units() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse("999m"), Some(Duration::from_millis(999)));
        assert_eq!(parse("990975u"), Some(Duration::from_micros(990_975)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(
            parse("99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn malformed_values_are_no_deadline() {
        for s in [
            "",
            "m",
            "5",
            "5x",
            "-5m",
            "123456789m",
            "1.5S",
            "5 m",
            "+5m",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }

    /// A service that answers after `delay` with an empty OK response.
    fn slow(
        delay: Duration,
    ) -> impl Service<
        Request<()>,
        Response = Response<tonic::body::Body>,
        Error = Infallible,
        Future = BoxFuture<Result<Response<tonic::body::Body>, Infallible>>,
    > + Clone {
        tower::service_fn(move |_req: Request<()>| -> BoxFuture<_> {
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Response::new(tonic::body::Body::default()))
            })
        })
    }

    fn request(timeout: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/runtime.v1.ImageService/PullImage");
        if let Some(t) = timeout {
            b = b.header(GRPC_TIMEOUT, t);
        }
        b.body(()).unwrap()
    }

    fn grpc_status(r: &Response<tonic::body::Body>) -> Option<&str> {
        r.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn an_expired_deadline_answers_deadline_exceeded() {
        let mut svc = DeadlineLayer.layer(slow(Duration::from_secs(10)));
        let r = svc.call(request(Some("1m"))).await.unwrap();
        assert_eq!(
            grpc_status(&r),
            Some(&*(tonic::Code::DeadlineExceeded as i32).to_string())
        );
    }

    #[tokio::test]
    async fn an_answer_within_the_deadline_or_without_one_passes() {
        let mut svc = DeadlineLayer.layer(slow(Duration::from_millis(5)));
        let r = svc.call(request(Some("1S"))).await.unwrap();
        assert_eq!(grpc_status(&r), None);
        let r = svc.call(request(None)).await.unwrap();
        assert_eq!(grpc_status(&r), None);
        let r = svc.call(request(Some("bogus"))).await.unwrap();
        assert_eq!(grpc_status(&r), None);
    }

    /// The order tonic's own timeout relies on: our timer, armed first for the
    /// same duration, has fired whenever one armed after it has.
    #[tokio::test]
    async fn our_timer_fires_no_later_than_one_armed_after_it() {
        let mut svc = DeadlineLayer.layer(slow(Duration::from_secs(10)));
        let ours = svc.call(request(Some("1m")));
        let theirs = tokio::time::sleep(Duration::from_millis(1));
        tokio::pin!(ours, theirs);
        (&mut theirs).await;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let Poll::Ready(Ok(r)) = ours.as_mut().poll(&mut cx) else {
            panic!("our deadline had not fired when a later one had")
        };
        assert_eq!(
            grpc_status(&r),
            Some(&*(tonic::Code::DeadlineExceeded as i32).to_string())
        );
    }
}
