//! Plain data types of the SIP layer: parties, headers, statuses, DTMF.

use std::fmt;

use super::error::{SipError, SipResult};

/// Transport a message or call came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SipTransport {
    Udp,
    Tcp,
}

impl fmt::Display for SipTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SipTransport::Udp => "udp",
            SipTransport::Tcp => "tcp",
        })
    }
}

/// One side of a call as named in a From or To header.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SipParty {
    /// The full URI, e.g. `sip:+4930123456@carrier.example;user=phone`.
    pub uri: String,
    /// The display name, unquoted, if any (`"Alice"` gives `Alice`).
    pub display_name: Option<String>,
    /// The user part of the URI (`+4930123456`): what the IVR shows as caller ID.
    pub user: Option<String>,
}

impl SipParty {
    /// The best caller-ID string: the user part, else the display name, else the URI.
    pub fn caller_id(&self) -> &str {
        self.user
            .as_deref()
            .or(self.display_name.as_deref())
            .unwrap_or(&self.uri)
    }
}

/// Header list as received (name as sent, value as sent), in order.
pub type HeaderList = Vec<(String, String)>;

/// Case-insensitive lookup of the first header with this name (long or compact form is NOT mapped).
pub fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Final status codes we may send to reject an initial INVITE we cannot serve.
///
/// Deliberately small: a rejection is for offers or requests we cannot serve, never a hang-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RejectStatus {
    /// 486 Busy Here.
    BusyHere,
    /// 488 Not Acceptable Here (no codec in common, bad SDP).
    NotAcceptableHere,
    /// 480 Temporarily Unavailable (e.g. shutting down).
    TemporarilyUnavailable,
    /// 503 Service Unavailable (overload).
    ServiceUnavailable,
    /// 403 Forbidden.
    Forbidden,
    /// 404 Not Found (unknown number called).
    NotFound,
    /// 603 Decline.
    Decline,
}

impl RejectStatus {
    pub fn code(self) -> u16 {
        match self {
            RejectStatus::BusyHere => 486,
            RejectStatus::NotAcceptableHere => 488,
            RejectStatus::TemporarilyUnavailable => 480,
            RejectStatus::ServiceUnavailable => 503,
            RejectStatus::Forbidden => 403,
            RejectStatus::NotFound => 404,
            RejectStatus::Decline => 603,
        }
    }

    pub(crate) fn to_stack(self) -> rsipstack::sip::StatusCode {
        rsipstack::sip::StatusCode::from(self.code())
    }
}

/// A DTMF digit received as SIP INFO (`application/dtmf-relay` or `application/dtmf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfInfo {
    /// `0`-`9`, `*`, `#`, `A`-`D`.
    pub digit: char,
    /// Duration in milliseconds, when given.
    pub duration_ms: Option<u32>,
}

/// Parses a SIP INFO DTMF body. `application/dtmf-relay` looks like
/// `Signal=5\r\nDuration=160\r\n`; `application/dtmf` is just `5`. Event codes 10 and 11 stand for
/// `*` and `#` in some phones. Returns `None` for anything else.
pub fn parse_dtmf_info(content_type: Option<&str>, body: &[u8]) -> Option<DtmfInfo> {
    let text = std::str::from_utf8(body).ok()?;
    let mime = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let digit_of = |s: &str| -> Option<char> {
        let s = s.trim();
        match s {
            "10" => Some('*'),
            "11" => Some('#'),
            _ => {
                let mut chars = s.chars();
                let c = chars.next()?;
                if chars.next().is_some() {
                    return None;
                }
                let c = c.to_ascii_uppercase();
                matches!(c, '0'..='9' | '*' | '#' | 'A'..='D').then_some(c)
            }
        }
    };
    if mime == "application/dtmf" {
        return Some(DtmfInfo {
            digit: digit_of(text)?,
            duration_ms: None,
        });
    }
    if !mime.is_empty() && mime != "application/dtmf-relay" {
        return None;
    }
    let mut digit = None;
    let mut duration_ms = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "signal" => digit = digit_of(v),
            "duration" => duration_ms = v.trim().parse().ok(),
            _ => {}
        }
    }
    Some(DtmfInfo {
        digit: digit?,
        duration_ms,
    })
}

/// Default limit for one custom header value, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 1000;

/// Headers a caller of [`super::SipEndpoint::invite`] may not set: the stack owns them.
const RESERVED_HEADERS: &[&str] = &[
    "via",
    "v",
    "from",
    "f",
    "to",
    "t",
    "call-id",
    "i",
    "cseq",
    "content-length",
    "l",
    "content-type",
    "c",
    "contact",
    "m",
    "max-forwards",
    "record-route",
    "route",
];

/// Checks that `name` is a SIP token (RFC 3261 §25.1) and not a header the stack owns.
pub fn validate_header_name(name: &str) -> SipResult<()> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(SipError::InvalidHeader {
            name: name.to_string(),
            reason: "not a SIP token".into(),
        });
    }
    if RESERVED_HEADERS
        .iter()
        .any(|r| r.eq_ignore_ascii_case(name))
    {
        return Err(SipError::InvalidHeader {
            name: name.to_string(),
            reason: "set by the SIP stack".into(),
        });
    }
    Ok(())
}

/// Makes any text safe as one SIP header value: control characters (CR, LF, TAB, NUL, ...) become
/// spaces, runs of whitespace collapse to one space, the ends are trimmed, and the result is cut
/// to at most `max_bytes` bytes on a character boundary, ending in `...` when cut. UTF-8 is kept
/// (RFC 3261 TEXT-UTF8).
pub fn sanitize_header_value(value: &str, max_bytes: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max_bytes));
    let mut last_space = true;
    for c in value.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        out.push(c);
    }
    let trimmed_len = out.trim_end().len();
    out.truncate(trimmed_len);
    if out.len() <= max_bytes {
        return out;
    }
    const ELLIPSIS: &str = "...";
    let mut cut = max_bytes.saturating_sub(ELLIPSIS.len());
    while cut > 0 && !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    let trimmed_len = out.trim_end().len();
    out.truncate(trimmed_len);
    out.push_str(ELLIPSIS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtmf_relay_signal_5() {
        let d = parse_dtmf_info(
            Some("application/dtmf-relay"),
            b"Signal=5\r\nDuration=160\r\n",
        )
        .expect("digit");
        assert_eq!(d.digit, '5');
        assert_eq!(d.duration_ms, Some(160));
        assert_eq!(
            parse_dtmf_info(Some("application/dtmf-relay"), b"Signal= #\r\n").map(|d| d.digit),
            Some('#')
        );
        assert_eq!(
            parse_dtmf_info(Some("application/dtmf-relay"), b"Signal=11\r\n").map(|d| d.digit),
            Some('#')
        );
        assert_eq!(
            parse_dtmf_info(Some("application/dtmf"), b"7").map(|d| d.digit),
            Some('7')
        );
        assert!(parse_dtmf_info(Some("application/dtmf-relay"), b"Signal=55\r\n").is_none());
        assert!(parse_dtmf_info(Some("text/plain"), b"Signal=5").is_none());
        assert!(parse_dtmf_info(None, b"\xff\xfe").is_none());
    }

    #[test]
    fn header_values_are_sanitized_and_cut() {
        assert_eq!(
            sanitize_header_value("a\r\nVia: evil\r\n\r\nb", 100),
            "a Via: evil b"
        );
        assert_eq!(sanitize_header_value("  x\t\ty  ", 100), "x y");
        let long = "é".repeat(600); // 1200 bytes
        let s = sanitize_header_value(&long, 1000);
        assert!(s.len() <= 1000, "{}", s.len());
        assert!(s.ends_with("..."));
        assert!(!s.contains('\r') && !s.contains('\n'));
        assert_eq!(sanitize_header_value("short", 3), "...");
    }

    #[test]
    fn header_names_are_checked() {
        assert!(validate_header_name("X-Humanline-Reason").is_ok());
        assert!(validate_header_name("X Bad").is_err());
        assert!(validate_header_name("X-Bad:").is_err());
        assert!(validate_header_name("Call-ID").is_err());
        assert!(validate_header_name("").is_err());
    }

    #[test]
    fn caller_id_prefers_user_part() {
        let p = SipParty {
            uri: "sip:+4930123@example.com".into(),
            display_name: Some("Alice".into()),
            user: Some("+4930123".into()),
        };
        assert_eq!(p.caller_id(), "+4930123");
    }
}
