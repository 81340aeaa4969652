//! What every push adapter returns, and how an HTTP answer or error is classified.

use crate::rows::excerpt;

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The receiver acknowledged the revocation.
    Delivered,
    /// A transient failure (unreachable, timeout, 5xx, 408, 429, 401 with a stale admin
    /// token): try again later.
    Retry,
    /// The receiver refused it for good (other 4xx): mark failed now.
    Failed,
}

impl Verdict {
    /// Column value of an attempt.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Retry => "retry",
            Verdict::Failed => "failed",
        }
    }
}

/// The result of one attempt at one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Verdict.
    pub verdict: Verdict,
    /// HTTP status of the deciding request (0: none).
    pub http_status: u16,
    /// Short error code (empty when delivered).
    pub code: String,
    /// Human-readable, value-free detail.
    pub detail: String,
    /// Excerpt of the receiver's answer.
    pub receipt: String,
}

impl Outcome {
    /// Delivered.
    pub fn delivered(http_status: u16, detail: impl Into<String>, receipt: &str) -> Outcome {
        Outcome {
            verdict: Verdict::Delivered,
            http_status,
            code: String::new(),
            detail: detail.into(),
            receipt: excerpt(receipt),
        }
    }

    /// Not delivered.
    pub fn failure(
        verdict: Verdict,
        http_status: u16,
        code: impl Into<String>,
        detail: impl Into<String>,
        receipt: &str,
    ) -> Outcome {
        Outcome {
            verdict,
            http_status,
            code: code.into(),
            detail: detail.into(),
            receipt: excerpt(receipt),
        }
    }

    /// A transport error (no HTTP answer): always retried.
    pub fn transport(step: &str, err: &reqwest::Error) -> Outcome {
        let code = if err.is_timeout() {
            "timeout"
        } else if err.is_connect() {
            "connect"
        } else {
            "transport"
        };
        // reqwest errors name the URL, which may hold a subject: keep only the kind.
        Outcome::failure(Verdict::Retry, 0, code, format!("{step}: {code} error"), "")
    }

    /// Classifies a non-success HTTP status.
    pub fn http(step: &str, status: u16, body: &str) -> Outcome {
        let verdict = match status {
            408 | 425 | 429 => Verdict::Retry,
            // Redirects are never followed (they would re-send the SET or the admin token
            // elsewhere), and the same request would be redirected again.
            300..=499 => Verdict::Failed,
            _ => Verdict::Retry,
        };
        let code = format!("http_{status}");
        Outcome::failure(
            verdict,
            status,
            code,
            format!("{step}: HTTP {status}"),
            body,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_statuses() {
        assert_eq!(Outcome::http("x", 503, "").verdict, Verdict::Retry);
        assert_eq!(Outcome::http("x", 429, "").verdict, Verdict::Retry);
        assert_eq!(Outcome::http("x", 400, "").verdict, Verdict::Failed);
        assert_eq!(Outcome::http("x", 403, "").verdict, Verdict::Failed);
        assert_eq!(Outcome::http("x", 307, "").verdict, Verdict::Failed);
        assert_eq!(Outcome::http("x", 307, "").code, "http_307");
        let long = "é".repeat(600);
        assert!(Outcome::http("x", 400, &long).receipt.len() <= 512);
    }
}
