//! The byte range a client asks for (`Range: bytes=…`), and the one rule that
//! turns it into a [`ByteRange`] of a blob of known size.

use crate::BlobError;
use crate::ByteRange;

/// A `Range` request header, parsed but not yet held against a blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=a-b` (`last` inclusive) or `bytes=a-` (`last` absent).
    From { start: u64, last: Option<u64> },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
    /// Several ranges: multipart answers are not served, the whole blob is.
    Several,
    /// Not a range this server understands.
    Malformed,
}

impl RangeRequest {
    /// Parse the value of a `Range` header.
    pub fn parse(value: &str) -> RangeRequest {
        let Some(spec) = value.trim().strip_prefix("bytes=") else {
            return RangeRequest::Malformed;
        };
        if spec.contains(',') {
            return RangeRequest::Several;
        }
        let Some((a, b)) = spec.split_once('-') else {
            return RangeRequest::Malformed;
        };
        let (a, b) = (a.trim(), b.trim());
        let number = |s: &str| s.parse::<u64>().ok();
        match (a.is_empty(), b.is_empty()) {
            (true, _) => number(b).map_or(RangeRequest::Malformed, RangeRequest::Suffix),
            (false, true) => number(a).map_or(RangeRequest::Malformed, |start| RangeRequest::From {
                start,
                last: None,
            }),
            (false, false) => match (number(a), number(b)) {
                (Some(start), Some(last)) => RangeRequest::From {
                    start,
                    last: Some(last),
                },
                _ => RangeRequest::Malformed,
            },
        }
    }

    /// The bytes of a blob of `size` bytes this request selects: `None` for the
    /// whole blob, [`BlobError::RangeNotSatisfiable`] when it selects nothing.
    /// An end beyond the blob is cut at its end.
    pub fn resolve(self, size: u64) -> Result<Option<ByteRange>, BlobError> {
        let unsatisfiable = |start, end| BlobError::RangeNotSatisfiable { start, end, size };
        let range = match self {
            RangeRequest::Several => return Ok(None),
            RangeRequest::Malformed => return Err(unsatisfiable(0, 0)),
            RangeRequest::Suffix(n) => {
                if n == 0 {
                    return Err(unsatisfiable(size, size));
                }
                ByteRange::new(size.saturating_sub(n), size)
            }
            RangeRequest::From { start, last } => {
                let end = match last {
                    None => size,
                    Some(last) if last < start => return Err(unsatisfiable(start, last)),
                    Some(last) => last.saturating_add(1).min(size),
                };
                ByteRange::new(start, end)
            }
        };
        range.validate(size)?;
        Ok(Some(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(s: &str, size: u64) -> Result<Option<ByteRange>, ()> {
        RangeRequest::parse(s).resolve(size).map_err(|_| ())
    }

    #[test]
    fn ranges_resolve_against_the_blob() {
        assert_eq!(resolve("bytes=0-9", 100), Ok(Some(ByteRange::new(0, 10))));
        assert_eq!(resolve("bytes=10-", 100), Ok(Some(ByteRange::new(10, 100))));
        assert_eq!(resolve("bytes=-5", 100), Ok(Some(ByteRange::new(95, 100))));
        assert_eq!(resolve("bytes=-500", 100), Ok(Some(ByteRange::new(0, 100))));
        assert_eq!(resolve("bytes=90-200", 100), Ok(Some(ByteRange::new(90, 100))));
        assert_eq!(resolve(" bytes= 1 - 2 ", 100), Ok(Some(ByteRange::new(1, 3))));
        assert_eq!(resolve("bytes=0-1,5-6", 100), Ok(None));
    }

    #[test]
    fn ranges_that_select_nothing_are_refused() {
        for bad in [
            "bytes=100-",
            "bytes=abc",
            "bytes=5-1",
            "items=0-1",
            "bytes=-0",
            "bytes=-",
            "bytes=1",
            "bytes=18446744073709551616-",
        ] {
            assert_eq!(resolve(bad, 100), Err(()), "{bad}");
        }
        assert_eq!(resolve("bytes=0-0", 0), Err(()));
        assert_eq!(resolve("bytes=-1", 0), Err(()));
    }
}
