//! Serving a stored file: the whole of it or one `Range` (resuming a large download), as
//! an attachment under its name.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use object_store::path::Path;
use object_store::{GetOptions, GetRange};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{BlobError, Blobs};

/// A stored file as it is served.
#[derive(Clone, Copy, Debug)]
pub struct Served<'a> {
    pub blob: &'a str,
    pub bytes: u64,
    /// The name it downloads as.
    pub file_name: &'a str,
    /// Sent as `Digest` (and `X-Content-SHA256`), when known.
    pub sha256: Option<&'a str>,
}

/// Answer a download of `file`: the whole file, or the one range `headers` ask for
/// (`206`), or `416` for a range outside it; as an attachment under its name, never
/// cached by the way. `Err`: the file is gone (`Ok(None)`) or the store failed.
pub async fn serve(
    blobs: &Blobs,
    file: Served<'_>,
    headers: &HeaderMap,
) -> Result<Option<Response>, BlobError> {
    let range = match headers
        .get(header::RANGE)
        .map_or(Ranged::Whole, |v| parse_range(v, file.bytes))
    {
        Ranged::Whole => None,
        Ranged::Part(range) => Some(range),
        Ranged::Outside => {
            return Ok(Some(
                (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{}", file.bytes))],
                    "The range is outside the file.",
                )
                    .into_response(),
            ));
        }
    };
    let options = GetOptions {
        range: range.clone().map(GetRange::Bounded),
        ..GetOptions::default()
    };
    let found = match blobs.store.get_opts(&Path::from(file.blob), options).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let length = found.range.end - found.range.start;
    let body = body_of(found).await.map_err(|e| BlobError(e.to_string()))?;
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    let mut set = |name, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, "application/octet-stream".to_owned());
    set(header::CONTENT_LENGTH, length.to_string());
    set(
        header::CONTENT_DISPOSITION,
        content_disposition(file.file_name),
    );
    set(header::ACCEPT_RANGES, "bytes".to_owned());
    set(header::CACHE_CONTROL, "private, no-store".to_owned());
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned());
    if let Some(sha256) = file.sha256 {
        set(
            HeaderName::from_static("x-content-sha256"),
            sha256.to_owned(),
        );
    }
    if let Some(range) = range {
        set(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", range.start, range.end - 1, file.bytes),
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(Some(response))
}

/// The body of a download: a local file is read in large chunks (object_store's own
/// stream reads 8 KiB at a time), any other store's stream is passed on.
async fn body_of(found: object_store::GetResult) -> std::io::Result<Body> {
    const READ_BYTES: usize = 256 * 1024;
    match found.payload {
        object_store::GetResultPayload::File(file, _) => {
            use tokio::io::{AsyncReadExt, AsyncSeekExt};
            let range = found.range;
            let mut file = tokio::fs::File::from_std(file);
            file.seek(std::io::SeekFrom::Start(range.start)).await?;
            let reader = file.take(range.end - range.start);
            Ok(Body::from_stream(
                tokio_util::io::ReaderStream::with_capacity(reader, READ_BYTES),
            ))
        }
        object_store::GetResultPayload::Stream(stream) => Ok(Body::from_stream(stream)),
    }
}

/// RFC 8187 `attr-char`s stay as they are in `filename*`; everything else is escaped.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// `attachment; filename="…"; filename*=UTF-8''…`: the quoted name is an ASCII stand-in
/// (other characters, quotes and backslashes as `_`) for clients that do not read the
/// encoded one, which keeps the name exactly.
pub fn content_disposition(file_name: &str) -> String {
    let ascii: String = file_name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "attachment; filename=\"{ascii}\"; filename*=UTF-8''{}",
        utf8_percent_encode(file_name, ATTR_CHAR)
    )
}

/// What a `Range` header asks of a file.
#[derive(Debug, PartialEq, Eq)]
enum Ranged {
    /// No header, or one that is malformed or lists several ranges: ignored, as HTTP
    /// allows, and the whole file is sent.
    Whole,
    /// One range in the file, half-open.
    Part(std::ops::Range<u64>),
    /// One range that misses the file (416).
    Outside,
}

/// One byte range of a file of `size` bytes: `bytes=a-b`, `bytes=a-` or `bytes=-n`.
fn parse_range(value: &HeaderValue, size: u64) -> Ranged {
    let parsed = || -> Option<Option<std::ops::Range<u64>>> {
        let spec = value.to_str().ok()?.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let (first, last) = (first.trim(), last.trim());
        let range = if first.is_empty() {
            let suffix: u64 = last.parse().ok()?;
            size.saturating_sub(suffix)..size
        } else {
            let start: u64 = first.parse().ok()?;
            let end = if last.is_empty() {
                size
            } else {
                let last: u64 = last.parse().ok()?;
                if last < start {
                    return None;
                }
                last.saturating_add(1).min(size)
            };
            start..end
        };
        Some((range.start < range.end).then_some(range))
    };
    match parsed() {
        None => Ranged::Whole,
        Some(Some(range)) => Ranged::Part(range),
        Some(None) => Ranged::Outside,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_safe() {
        assert_eq!(
            content_disposition("plan \"b\".txt"),
            "attachment; filename=\"plan _b_.txt\"; filename*=UTF-8''plan%20%22b%22.txt"
        );
        assert_eq!(
            content_disposition("résumé;x\r\n.pdf"),
            "attachment; filename=\"r_sum_;x__.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%3Bx%0D%0A.pdf"
        );
    }

    #[test]
    fn ranges() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(parse_range(&v("bytes=0-9"), 100), Ranged::Part(0..10));
        assert_eq!(parse_range(&v("bytes=0-0"), 100), Ranged::Part(0..1));
        assert_eq!(parse_range(&v("bytes=90-"), 100), Ranged::Part(90..100));
        assert_eq!(parse_range(&v("bytes=-10"), 100), Ranged::Part(90..100));
        assert_eq!(parse_range(&v("bytes=50-500"), 100), Ranged::Part(50..100));
        assert_eq!(parse_range(&v("bytes=100-"), 100), Ranged::Outside);
        assert_eq!(parse_range(&v("bytes=-0"), 100), Ranged::Outside);
        assert_eq!(parse_range(&v("bytes=0-1,5-6"), 100), Ranged::Whole);
        assert_eq!(parse_range(&v("items=0-1"), 100), Ranged::Whole);
        assert_eq!(parse_range(&v("bytes=5-1"), 100), Ranged::Whole);
        assert_eq!(
            parse_range(&v("bytes=99999999999999999999-"), 100),
            Ranged::Whole
        );
    }
}
