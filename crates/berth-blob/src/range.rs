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
    /// Not a byte range this server understands.
    Malformed,
}

impl RangeRequest {
    /// Parse the value of a `Range` header; `None` when the header is to be ignored
    /// and the whole blob served (RFC 9110: a unit other than `bytes`, and several
    /// ranges, which this server does not answer with a multipart body).
    ///
    /// A position too large for 64 bits is as good as infinite: an end or a suffix
    /// beyond the blob is cut at its end, a start beyond it is unsatisfiable.
    pub fn parse(value: &str) -> Option<RangeRequest> {
        let (unit, spec) = value.trim().split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return None;
        }
        if spec.contains(',') {
            return None;
        }
        let Some((a, b)) = spec.split_once('-') else {
            return Some(RangeRequest::Malformed);
        };
        let (a, b) = (a.trim(), b.trim());
        Some(match (position(a), position(b)) {
            (None, Some(n)) if a.is_empty() => RangeRequest::Suffix(n),
            (Some(start), None) if b.is_empty() => RangeRequest::From { start, last: None },
            (Some(start), Some(last)) => RangeRequest::From {
                start,
                last: Some(last),
            },
            _ => RangeRequest::Malformed,
        })
    }

    /// The bytes of a blob of `size` bytes this request selects: `None` for the
    /// whole blob, [`BlobError::RangeNotSatisfiable`] when it selects nothing.
    /// An end beyond the blob is cut at its end.
    pub fn resolve(self, size: u64) -> Result<Option<ByteRange>, BlobError> {
        let unsatisfiable = |start, end| BlobError::RangeNotSatisfiable { start, end, size };
        let range = match self {
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

/// A byte position: decimal digits only; more than 64 bits hold saturates.
fn position(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(s: &str, size: u64) -> Result<Option<ByteRange>, ()> {
        match RangeRequest::parse(s) {
            Some(r) => r.resolve(size).map_err(|_| ()),
            None => Ok(None),
        }
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
        // Ends and suffixes beyond the blob, even beyond 64 bits, are cut at its end.
        assert_eq!(
            resolve("bytes=0-99999999999999999999", 100),
            Ok(Some(ByteRange::new(0, 100)))
        );
        assert_eq!(
            resolve("bytes=-99999999999999999999", 100),
            Ok(Some(ByteRange::new(0, 100)))
        );
        // Another unit is ignored: the whole blob.
        assert_eq!(resolve("items=0-1", 100), Ok(None));
        assert_eq!(resolve("Bytes=0-1", 100), Ok(Some(ByteRange::new(0, 2))));
    }

    #[test]
    fn ranges_that_select_nothing_are_refused() {
        for bad in [
            "bytes=100-",
            "bytes=abc",
            "bytes=5-1",
            "bytes=-0",
            "bytes=+1-2",
            "bytes=0x1-2",
            "bytes=-",
            "bytes=1",
            "bytes=18446744073709551616-",
            "bytes=99999999999999999999-99999999999999999999",
        ] {
            assert_eq!(resolve(bad, 100), Err(()), "{bad}");
        }
        assert_eq!(resolve("bytes=0-0", 0), Err(()));
        assert_eq!(resolve("bytes=-1", 0), Err(()));
    }
}
