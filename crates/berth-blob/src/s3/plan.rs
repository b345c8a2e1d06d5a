//! Pure planning for the S3 backend: object keys, part sizes and copy ranges.
//!
//! Nothing here does I/O, so every rule about S3's limits is unit-tested in
//! one place.

use berth_oci::Digest;

use crate::BlobError;

pub(crate) const MIB: u64 = 1024 * 1024;
/// S3's smallest multipart part (all but the last part).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest single PUT / multipart part / single-call CopyObject.
pub const MAX_OBJECT_PART: u64 = 5 * 1024 * MIB;
/// S3's largest number of parts in one multipart upload.
pub const MAX_PARTS: u32 = 10_000;
/// Upload part objects double in size after every this many parts, so
/// `MAX_PARTS` parts hold about `part_size * 1000 * 1023` bytes (8 TiB with
/// the default 8 MiB).
pub const PARTS_PER_DOUBLING: u32 = 1_000;

/// Size of part `n` (1-based) for a configured base `part_size`: the base,
/// doubled every [`PARTS_PER_DOUBLING`] parts, capped at [`MAX_OBJECT_PART`].
pub fn part_size_for(base: u64, n: u32) -> u64 {
    let doublings = n.saturating_sub(1) / PARTS_PER_DOUBLING;
    let mut size = base.min(MAX_OBJECT_PART);
    for _ in 0..doublings {
        size = size.saturating_mul(2).min(MAX_OBJECT_PART);
    }
    size
}

/// Byte ranges (start, end inclusive) in which one part object of `size`
/// bytes is copied with UploadPartCopy when no range may exceed `limit`.
///
/// A part object that is not the last one is split into equal ranges (so
/// each stays at least [`MIN_PART_SIZE`] whenever that is possible, which
/// `S3BlobStore::connect` checks for the configured sizes); the last one greedily into `limit`-sized ranges
/// plus a remainder, because only the very last range may be small.
pub fn copy_ranges(size: u64, limit: u64, last: bool) -> Vec<(u64, u64)> {
    if size == 0 {
        return Vec::new();
    }
    let limit = limit.max(1);
    if size <= limit {
        return vec![(0, size - 1)];
    }
    let mut out = Vec::new();
    if last {
        let mut start = 0;
        while start < size {
            let len = limit.min(size - start);
            out.push((start, start + len - 1));
            start += len;
        }
    } else {
        let k = size.div_ceil(limit);
        let base = size / k;
        let extra = size % k;
        let mut start = 0;
        for i in 0..k {
            let len = base + u64::from(i < extra);
            out.push((start, start + len - 1));
            start += len;
        }
    }
    out
}

/// Check `part_size` and `copy_part_limit` against S3's limits: every full
/// part object the upload path can produce must be copyable in ranges of at
/// least [`MIN_PART_SIZE`] and at most `copy_part_limit`.
pub fn validate_sizes(part_size: u64, copy_part_limit: u64) -> Result<(), String> {
    if !(MIN_PART_SIZE..=MAX_OBJECT_PART).contains(&part_size) {
        return Err(format!(
            "part_size is {part_size} bytes; it must be between {MIN_PART_SIZE} (5 MiB) and \
             {MAX_OBJECT_PART} (5 GiB)"
        ));
    }
    validate_copy_limit(part_size, copy_part_limit)
}

/// See [`validate_sizes`].
pub fn validate_copy_limit(part_size: u64, copy_part_limit: u64) -> Result<(), String> {
    if !(MIN_PART_SIZE..=MAX_OBJECT_PART).contains(&copy_part_limit) {
        return Err(format!(
            "copy_part_limit is {copy_part_limit} bytes; it must be between {MIN_PART_SIZE} \
             (5 MiB) and {MAX_OBJECT_PART} (5 GiB)"
        ));
    }
    let mut n = 1;
    while n <= MAX_PARTS {
        let size = part_size_for(part_size, n);
        if size > copy_part_limit {
            let ranges = copy_ranges(size, copy_part_limit, false);
            if ranges.iter().any(|(s, e)| e - s + 1 < MIN_PART_SIZE) {
                return Err(format!(
                    "copy_part_limit {copy_part_limit} cannot split part objects of {size} bytes \
                     (part_size {part_size}, grown after {} parts) into copy ranges of at least \
                     5 MiB; use a copy_part_limit of at least 10 MiB or at least the largest \
                     part size",
                    n - 1
                ));
            }
        }
        n += PARTS_PER_DOUBLING;
    }
    Ok(())
}

/// Normalise a configured key prefix: no leading or trailing slashes, no
/// empty segments; `""` or `"a/b/"`.
pub fn normalize_prefix(prefix: &str) -> String {
    let segments: Vec<&str> = prefix.split('/').filter(|s| !s.is_empty()).collect();
    if segments.is_empty() {
        String::new()
    } else {
        format!("{}/", segments.join("/"))
    }
}

/// Key layout under a normalised prefix (see [`normalize_prefix`]).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: normalize_prefix(prefix),
        }
    }

    /// `<prefix>blobs/<algo>/<2 hex>/<hex>`. In byte order these keys sort as
    /// their digests do (algorithm names sort like [`berth_oci::DigestAlgorithm`],
    /// the shard is a prefix of the hex), which blob listings rely on.
    pub fn blob(&self, digest: &Digest) -> Result<String, BlobError> {
        let hex = digest.hex();
        let canonical = hex.len() >= 2 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !canonical {
            return Err(BlobError::Backend(format!(
                "digest {digest} has a non-canonical hex part"
            )));
        }
        Ok(format!(
            "{}blobs/{}/{}/{}",
            self.prefix,
            digest.algorithm().as_str(),
            &hex[..2],
            hex
        ))
    }

    /// `<prefix>blobs/` (for listing).
    pub fn blobs_root(&self) -> String {
        format!("{}blobs/", self.prefix)
    }

    /// `<prefix>uploads/`.
    pub fn uploads_root(&self) -> String {
        format!("{}uploads/", self.prefix)
    }

    /// `<prefix>uploads/<id>/`.
    pub fn upload_dir(&self, id: &str) -> String {
        format!("{}uploads/{id}/", self.prefix)
    }

    /// `<prefix>uploads/<id>/part-NNNNN`.
    pub fn part(&self, id: &str, n: u32) -> String {
        format!("{}uploads/{id}/{}", self.prefix, part_name(n))
    }

    /// `<prefix>_probe/<name>`.
    pub fn probe(&self, name: &str) -> String {
        format!("{}_probe/{name}", self.prefix)
    }

    /// The upload id and part number of a key under [`Keys::uploads_root`],
    /// or `None` for anything else.
    pub fn parse_part_key(&self, key: &str) -> Option<(String, u32)> {
        let rest = key.strip_prefix(&self.uploads_root())?;
        let (id, name) = rest.split_once('/')?;
        if !crate::is_valid_upload_id(id) {
            return None;
        }
        Some((id.to_owned(), parse_part_name(name)?))
    }

    /// The digest of a key under [`Keys::blobs_root`], or `None`.
    pub fn parse_blob_key(&self, key: &str) -> Option<Digest> {
        let rest = key.strip_prefix(&self.blobs_root())?;
        let mut it = rest.split('/');
        let (algo, shard, hex) = (it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || !hex.starts_with(shard) || shard.len() != 2 {
            return None;
        }
        let digest = Digest::parse(&format!("{algo}:{hex}")).ok()?;
        (digest.hex() == hex).then_some(digest)
    }
}

/// `part-00001` … (at least five digits).
pub fn part_name(n: u32) -> String {
    format!("part-{n:05}")
}

/// Inverse of [`part_name`]; `None` for anything that is not one.
pub fn parse_part_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("part-")?;
    if digits.len() < 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (n >= 1 && part_name(n) == name).then_some(n)
}

/// Local spool file name for the part that will become `part-NNNNN`.
pub fn spool_name(n: u32) -> String {
    format!("spool-{n:05}")
}

/// Inverse of [`spool_name`].
pub fn parse_spool_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("spool-")?;
    if digits.len() < 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (n >= 1 && spool_name(n) == name).then_some(n)
}

/// Percent-encode a key for `x-amz-copy-source` (everything but unreserved
/// characters and `/`).
pub fn encode_copy_source(bucket: &str, key: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + key.len() + 1);
    for part in [bucket, "/", key] {
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// Parse `Content-Range: bytes a-b/total` into `(a, b, total)`.
pub fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_keys_sort_like_their_digests() {
        use berth_oci::DigestAlgorithm;
        let keys = Keys::new("reg");
        let mut digests = Vec::new();
        for i in 0..200u32 {
            let data = i.to_le_bytes();
            digests.push(Digest::sha256_of(&data));
            digests.push(Digest::of(DigestAlgorithm::Sha512, &data));
        }
        let mut by_key = digests.clone();
        by_key.sort_by_key(|d| keys.blob(d).unwrap());
        digests.sort();
        assert_eq!(by_key, digests);
        for d in &digests {
            assert_eq!(keys.parse_blob_key(&keys.blob(d).unwrap()).as_ref(), Some(d));
        }
    }

    #[test]
    fn part_size_doubles_every_thousand_parts() {
        let base = 8 * MIB;
        assert_eq!(part_size_for(base, 1), base);
        assert_eq!(part_size_for(base, 1000), base);
        assert_eq!(part_size_for(base, 1001), 2 * base);
        assert_eq!(part_size_for(base, 2000), 2 * base);
        assert_eq!(part_size_for(base, 2001), 4 * base);
        assert_eq!(part_size_for(base, 10_000), 512 * base);
        // Never above S3's part limit, even for a large base.
        assert_eq!(part_size_for(MAX_OBJECT_PART, 10_000), MAX_OBJECT_PART);
        assert_eq!(part_size_for(1024 * MIB, 5_000), MAX_OBJECT_PART);
        // n = 0 is treated like 1 (no underflow).
        assert_eq!(part_size_for(base, 0), base);
    }

    #[test]
    fn ten_thousand_parts_hold_terabytes() {
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size_for(8 * MIB, n)).sum();
        assert_eq!(total, 8 * MIB * 1000 * 1023);
        let smallest: u64 = (1..=MAX_PARTS).map(|n| part_size_for(MIN_PART_SIZE, n)).sum();
        assert!(smallest > 4 * 1024 * 1024 * MIB, "5 MiB base: {smallest}");
    }

    fn check_ranges(size: u64, limit: u64, last: bool) {
        let ranges = copy_ranges(size, limit, last);
        let mut next = 0;
        for (i, (s, e)) in ranges.iter().enumerate() {
            assert_eq!(*s, next, "ranges must be contiguous");
            assert!(e >= s);
            let len = e - s + 1;
            assert!(len <= limit, "range {len} above limit {limit}");
            let is_final = last && i + 1 == ranges.len();
            if size > limit && !is_final && limit >= 2 * MIN_PART_SIZE {
                assert!(len >= MIN_PART_SIZE, "range {len} below 5 MiB");
            }
            next = e + 1;
        }
        assert_eq!(next, size, "ranges must cover the object");
    }

    #[test]
    fn copy_ranges_cover_and_respect_limits() {
        assert!(copy_ranges(0, 10 * MIB, true).is_empty());
        assert_eq!(copy_ranges(1, 10 * MIB, false), vec![(0, 0)]);
        assert_eq!(copy_ranges(10 * MIB, 10 * MIB, false), vec![(0, 10 * MIB - 1)]);
        assert_eq!(
            copy_ranges(12 * MIB, 10 * MIB, false),
            vec![(0, 6 * MIB - 1), (6 * MIB, 12 * MIB - 1)]
        );
        assert_eq!(
            copy_ranges(11 * MIB, 10 * MIB, true),
            vec![(0, 10 * MIB - 1), (10 * MIB, 11 * MIB - 1)]
        );
        for size in [1, 5 * MIB, 10 * MIB + 1, 23 * MIB + 7, 100 * MIB, 4097 * MIB] {
            for limit in [5 * MIB, 6 * MIB, 10 * MIB, 64 * MIB, MAX_OBJECT_PART] {
                check_ranges(size, limit, false);
                check_ranges(size, limit, true);
            }
        }
    }

    #[test]
    fn copy_limit_validation() {
        // Defaults.
        assert!(validate_sizes(8 * MIB, MAX_OBJECT_PART).is_ok());
        // Small limits are fine as long as every full part splits into >= 5 MiB ranges.
        assert!(validate_sizes(5 * MIB, 6 * MIB).is_ok());
        assert!(validate_sizes(12 * MIB, 10 * MIB).is_ok());
        // 8 MiB parts cannot be copied in 6 MiB ranges without a < 5 MiB range.
        let err = validate_sizes(8 * MIB, 6 * MIB).unwrap_err();
        assert!(err.contains("copy_part_limit"), "{err}");
        assert!(validate_sizes(4 * MIB, MAX_OBJECT_PART).is_err());
        assert!(validate_sizes(8 * MIB, 4 * MIB).is_err());
        assert!(validate_sizes(8 * MIB, MAX_OBJECT_PART + 1).is_err());
    }

    #[test]
    fn keys_layout() {
        let d = Digest::sha256_of(b"x");
        let hex = d.hex().to_owned();
        for (prefix, expect) in [("", ""), ("/a//b/", "a/b/"), ("reg", "reg/")] {
            let keys = Keys::new(prefix);
            let blob = keys.blob(&d).expect("key");
            assert_eq!(blob, format!("{expect}blobs/sha256/{}/{hex}", &hex[..2]));
            assert_eq!(keys.parse_blob_key(&blob), Some(d.clone()));
            let part = keys.part("abc-1", 12);
            assert_eq!(part, format!("{expect}uploads/abc-1/part-00012"));
            assert_eq!(keys.parse_part_key(&part), Some(("abc-1".to_owned(), 12)));
            assert_eq!(keys.parse_part_key(&format!("{expect}uploads/abc-1/")), None);
            assert_eq!(keys.parse_part_key(&format!("{expect}uploads/a.b/part-00001")), None);
        }
        assert_eq!(parse_part_name("part-00000"), None);
        assert_eq!(parse_part_name("part-1"), None);
        assert_eq!(parse_part_name("part-123456"), Some(123_456));
        assert_eq!(parse_part_name("part-012345"), None);
        assert_eq!(parse_spool_name(&spool_name(7)), Some(7));
        assert_eq!(parse_spool_name("spool-00007.tmp"), None);
    }

    #[test]
    fn copy_source_and_content_range() {
        assert_eq!(encode_copy_source("b", "a/b c+d"), "b/a/b%20c%2Bd");
        assert_eq!(parse_content_range("bytes 0-9/100"), Some((0, 9, 100)));
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("junk"), None);
    }
}
