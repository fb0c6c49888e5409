//! Counting the HTTP requests an OpenDAL operator actually sends, so tests
//! can hold what docs/STORAGE.md promises per `Storage` call (one PUT per
//! write, one ranged GET per range read, one LIST per 1000 keys).

use opendal::raw::{HttpBody, HttpClient, HttpFetch};
use opendal::Buffer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// HTTP requests sent, by what they do. Zero for the filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpCounts {
    /// Object reads (GET without a listing query).
    pub get: u64,
    /// Whole-object uploads (PUT without a part number).
    pub put: u64,
    /// Metadata reads (HEAD).
    pub head: u64,
    /// Deletes (DELETE).
    pub delete: u64,
    /// Listing pages (GET with a listing query, PROPFIND).
    pub list: u64,
    /// Multipart upload steps (initiate, part, complete, abort).
    pub multipart: u64,
    /// Anything else (batch deletes, MKCOL, ...).
    pub other: u64,
}

impl HttpCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.get + self.put + self.head + self.delete + self.list + self.multipart + self.other
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    get: AtomicU64,
    put: AtomicU64,
    head: AtomicU64,
    delete: AtomicU64,
    list: AtomicU64,
    multipart: AtomicU64,
    other: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> HttpCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpCounts {
            get: get(&self.get),
            put: get(&self.put),
            head: get(&self.head),
            delete: get(&self.delete),
            list: get(&self.list),
            multipart: get(&self.multipart),
            other: get(&self.other),
        }
    }

    fn record(&self, method: &str, query: &str) {
        let has = |key: &str| {
            query
                .split('&')
                .any(|pair| pair == key || pair.starts_with(&format!("{key}=")))
        };
        let slot = match method {
            _ if has("uploadId") || has("uploads") => &self.multipart,
            "GET" if has("list-type") || has("delimiter") || has("prefix") || has("comp") => {
                &self.list
            }
            "PROPFIND" => &self.list,
            "GET" => &self.get,
            "PUT" => &self.put,
            "HEAD" => &self.head,
            "DELETE" => &self.delete,
            _ => &self.other,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }
}

/// An HTTP client that counts each request, then sends it with OpenDAL's
/// default client.
pub(crate) struct CountingFetch {
    inner: HttpClient,
    counters: Arc<Counters>,
}

impl CountingFetch {
    pub(crate) fn client(counters: Arc<Counters>) -> HttpClient {
        HttpClient::with(CountingFetch {
            inner: HttpClient::default(),
            counters,
        })
    }
}

impl HttpFetch for CountingFetch {
    async fn fetch(&self, req: http::Request<Buffer>) -> opendal::Result<http::Response<HttpBody>> {
        self.counters
            .record(req.method().as_str(), req.uri().query().unwrap_or(""));
        self.inner.fetch(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_classified_by_method_and_query() {
        let c = Counters::default();
        c.record("GET", "");
        c.record("GET", "list-type=2&prefix=index%2F");
        c.record("PUT", "");
        c.record("PUT", "partNumber=1&uploadId=x");
        c.record("POST", "uploads");
        c.record("HEAD", "");
        c.record("DELETE", "");
        c.record("PROPFIND", "");
        c.record("POST", "delete");
        assert_eq!(
            c.snapshot(),
            HttpCounts {
                get: 1,
                put: 1,
                head: 1,
                delete: 1,
                list: 2,
                multipart: 2,
                other: 1,
            }
        );
    }
}
