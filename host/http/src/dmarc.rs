//! DMARC aggregate reports seen from the host: the reports the `dmarc-reports` plugin keeps
//! in the key-value namespace `dmarc` (layout in `sluice_dmarc`), listed, shown and
//! summarised per domain and day by the admin API and the CLI.

use crate::api::{ApiState, ErrorBody, blocking, error, page_limit};
use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sluice_dmarc::{DaySummary, NAMESPACE, Record, Stored, keys, valid_domain, valid_id};
use sluice_store::kv::MAX_SCAN;
use sluice_store::{KvStore, StoreError};
use std::sync::Arc;
use utoipa::ToSchema;

/// Which reports: a domain and the period's beginning (unix seconds, inclusive).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub domain: Option<String>,
    pub since: Option<u64>,
    pub until: Option<u64>,
}

/// The query parameters of the summary (and the start of the list's).
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FilterQuery {
    /// The domain the reports are about (lowercase).
    #[param(pattern = "^[a-z0-9._-]{1,253}$")]
    pub domain: Option<String>,
    /// Reports whose period begins at or after this time (unix seconds).
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Reports whose period begins at or before this time (unix seconds).
    #[param(minimum = 0)]
    pub until: Option<i64>,
}

impl FilterQuery {
    fn filter(self) -> Result<Filter, String> {
        let time = |name: &str, v: Option<i64>| match v {
            Some(n) if n < 0 => Err(format!("{name} must not be negative")),
            v => Ok(v.map(|n| n as u64)),
        };
        let f = Filter {
            since: time("since", self.since)?,
            until: time("until", self.until)?,
            domain: self.domain,
        };
        f.check()?;
        Ok(f)
    }
}

impl Filter {
    /// The domain, checked: a message fit for an HTTP 400 or a CLI error otherwise.
    pub fn check(&self) -> Result<(), String> {
        if let Some(d) = &self.domain
            && !valid_domain(d)
        {
            return Err(format!(
                "`{d}` is not a domain name (lowercase letters, digits, '-', '_' and dots)"
            ));
        }
        Ok(())
    }

    fn holds(&self, r: &Stored) -> bool {
        self.since.is_none_or(|s| r.begin >= s) && self.until.is_none_or(|u| r.begin <= u)
    }
}

/// A page of reports, by domain then period.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReportPage {
    pub reports: Vec<Stored>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

/// One report with its records.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ReportDetail {
    pub report: Stored,
    /// Per source address: the count and the SPF, DKIM and DMARC results.
    pub records: Vec<Record>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    /// Per domain and UTC day of the reported periods' beginning.
    pub days: Vec<DaySummary>,
}

/// Reports matching `f`, at most `limit`, after the cursor `after` (a `next`).
pub fn list(
    kv: &dyn KvStore,
    f: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<ReportPage, StoreError> {
    let prefix = keys::reports(f.domain.as_deref());
    // Within a domain the keys are in period order: start at `since`, stop past `until`.
    let mut cursor = match (&f.domain, f.since) {
        (Some(d), Some(s)) => Some(keys::since(d, s)),
        _ => None,
    };
    if let Some(a) = after
        && cursor.as_deref().is_none_or(|c| a > c)
    {
        cursor = Some(a.to_string());
    }
    let mut reports = Vec::new();
    loop {
        let page = kv.scan(NAMESPACE, &prefix, cursor.as_deref(), MAX_SCAN)?;
        for (key, value) in page.entries {
            let Ok(r) = serde_json::from_slice::<Stored>(&value) else {
                continue;
            };
            if f.domain.is_some() && f.until.is_some_and(|u| r.begin > u) {
                return Ok(ReportPage {
                    reports,
                    next: None,
                });
            }
            if f.holds(&r) {
                reports.push(r);
                if reports.len() == limit {
                    return Ok(ReportPage {
                        reports,
                        next: Some(key),
                    });
                }
            }
            cursor = Some(key);
        }
        if page.next.is_none() {
            return Ok(ReportPage {
                reports,
                next: None,
            });
        }
    }
}

/// Report `id` with its records; none when unknown (or expired).
pub fn get(kv: &dyn KvStore, id: &str) -> Result<Option<ReportDetail>, StoreError> {
    if !valid_id(id) {
        return Ok(None);
    }
    let Some(key) = kv.get(NAMESPACE, &keys::index(id))? else {
        return Ok(None);
    };
    let Some(value) = kv.get(NAMESPACE, &String::from_utf8_lossy(&key))? else {
        return Ok(None);
    };
    let report: Stored = serde_json::from_slice(&value)
        .map_err(|e| StoreError::Failed(format!("report {id} unreadable: {e}")))?;
    let chunk_keys: Vec<String> = (0..report.chunks).map(|n| keys::chunk(id, n)).collect();
    let mut records = Vec::new();
    for (n, c) in kv.get_many(NAMESPACE, &chunk_keys)?.into_iter().enumerate() {
        // Chunks expire with their report, but a report without all its records is no
        // report: say so rather than show part of it.
        let Some(c) = c else {
            return Err(StoreError::Failed(format!(
                "report {id}: records chunk {n} is missing"
            )));
        };
        records.extend(
            serde_json::from_slice::<Vec<Record>>(&c).map_err(|e| {
                StoreError::Failed(format!("records of report {id} unreadable: {e}"))
            })?,
        );
    }
    Ok(Some(ReportDetail { report, records }))
}

/// Every matching report summed per domain and day.
pub fn summary(kv: &dyn KvStore, f: &Filter) -> Result<Summary, StoreError> {
    let mut days = sluice_dmarc::Summariser::default();
    let mut after: Option<String> = None;
    loop {
        let page = list(kv, f, after.as_deref(), MAX_SCAN)?;
        for r in &page.reports {
            days.add(r);
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    Ok(Summary {
        days: days.finish(),
    })
}

/// The list's parameters: [`FilterQuery`]'s and paging. (Spelt out rather than
/// `#[serde(flatten)]`: query strings through a flattened struct lose their numbers.)
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The domain the reports are about (lowercase).
    #[param(pattern = "^[a-z0-9._-]{1,253}$")]
    pub domain: Option<String>,
    /// Reports whose period begins at or after this time (unix seconds).
    #[param(minimum = 0)]
    pub since: Option<i64>,
    /// Reports whose period begins at or before this time (unix seconds).
    #[param(minimum = 0)]
    pub until: Option<i64>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Reports after this one (the `next` of the previous page).
    #[param(max_length = 512)]
    pub after: Option<String>,
}

/// DMARC aggregate reports received, by domain and period.
#[utoipa::path(get, path = "/api/v1/dmarc/reports", tag = "dmarc", params(ListQuery),
    security(("api_key" = [])),
    responses((status = 200, body = ReportPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(crate) async fn reports(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let limit = match page_limit(q.limit, 100) {
        Ok(l) => l,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let filter = FilterQuery {
        domain: q.domain,
        since: q.since,
        until: q.until,
    }
    .filter();
    let filter = match filter {
        Ok(f) => f,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    if q.after.as_ref().is_some_and(|a| a.chars().count() > 512) {
        return error(
            StatusCode::BAD_REQUEST,
            "after is longer than 512 characters",
        );
    }
    let kv = s.kv.clone();
    match blocking(move || list(&*kv, &filter, q.after.as_deref(), limit)).await {
        Ok(page) => Json(page).into_response(),
        Err(r) => r,
    }
}

/// One report with its records.
#[utoipa::path(get, path = "/api/v1/dmarc/reports/{id}", tag = "dmarc",
    params(("id" = String, Path, pattern = "^[0-9a-f]{16}$")),
    security(("api_key" = [])),
    responses((status = 200, body = ReportDetail), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 500, body = ErrorBody)))]
pub(crate) async fn report(
    State(s): State<Arc<ApiState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match id {
        Ok(Path(id)) if valid_id(&id) => id,
        Ok(Path(id)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("`{id}` is not a report id (16 lowercase hex digits)"),
            );
        }
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let kv = s.kv.clone();
    let lookup = id.clone();
    match blocking(move || get(&*kv, &lookup)).await {
        Ok(Some(d)) => Json(d).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no DMARC report {id}")),
        Err(r) => r,
    }
}

/// The reports summed per domain and UTC day: messages, DMARC pass and fail, aligned DKIM
/// and SPF passes, what the receivers quarantined and rejected.
#[utoipa::path(get, path = "/api/v1/dmarc/summary", tag = "dmarc", params(FilterQuery),
    security(("api_key" = [])),
    responses((status = 200, body = Summary), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(crate) async fn day_summary(
    State(s): State<Arc<ApiState>>,
    q: Result<Query<FilterQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match q {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let f = match q.filter() {
        Ok(f) => f,
        Err(m) => return error(StatusCode::BAD_REQUEST, m),
    };
    let kv = s.kv.clone();
    match blocking(move || summary(&*kv, &f)).await {
        Ok(sum) => Json(sum).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dmarc::{Policy, Report};
    use sluice_store::KvLimits;
    use sluice_store::kv::MemoryKv as MemKv;

    fn put(kv: &dyn KvStore, domain: &str, reporter: &str, begin: u64, failing: u64) -> String {
        let r = Report {
            reporter: reporter.into(),
            reporter_email: String::new(),
            report_id: format!("{reporter}-{begin}"),
            begin,
            end: begin + 86_399,
            domain: domain.into(),
            policy: Policy::default(),
            records: vec![Record {
                source_ip: "192.0.2.1".into(),
                count: 10 + failing,
                disposition: "none".into(),
                dkim: if failing > 0 { "fail" } else { "pass" }.into(),
                spf: "fail".into(),
                reasons: vec![],
                header_from: domain.into(),
                envelope_from: None,
                envelope_to: None,
                dkim_results: vec![],
                spf_results: vec![],
            }],
            skipped: 0,
        };
        let id = r.id();
        let l = KvLimits::default();
        let chunks = r.chunks();
        for (n, c) in chunks.iter().enumerate() {
            kv.set(NAMESPACE, &keys::chunk(&id, n as u32), c, None, &l)
                .unwrap();
        }
        let key = keys::report(domain, begin, &id);
        let v = serde_json::to_vec(&r.stored(id.clone(), chunks.len() as u32, 0)).unwrap();
        kv.set(NAMESPACE, &key, &v, None, &l).unwrap();
        kv.set(NAMESPACE, &keys::index(&id), key.as_bytes(), None, &l)
            .unwrap();
        id
    }

    #[test]
    fn lists_pages_and_filters_by_domain_and_period() {
        let kv = MemKv::default();
        let day = 86_400;
        for d in 0..5 {
            put(&kv, "example.com", "google.com", 1000 * day + d * day, 0);
        }
        put(&kv, "example.org", "google.com", 1000 * day, 0);
        let all = list(&kv, &Filter::default(), None, 100).unwrap();
        assert_eq!(all.reports.len(), 6);
        assert!(all.next.is_none());

        let f = Filter {
            domain: Some("example.com".into()),
            since: Some(1001 * day),
            until: Some(1003 * day),
        };
        let p1 = list(&kv, &f, None, 2).unwrap();
        assert_eq!(
            p1.reports.iter().map(|r| r.begin / day).collect::<Vec<_>>(),
            vec![1001, 1002]
        );
        let p2 = list(&kv, &f, p1.next.as_deref(), 2).unwrap();
        assert_eq!(
            p2.reports.iter().map(|r| r.begin / day).collect::<Vec<_>>(),
            vec![1003]
        );
        assert!(p2.next.is_none());

        let sum = summary(
            &kv,
            &Filter {
                domain: Some("example.com".into()),
                ..Filter::default()
            },
        )
        .unwrap();
        assert_eq!(sum.days.len(), 5);
        assert!(sum.days.iter().all(|d| d.messages == 10 && d.reports == 1));
    }

    #[test]
    fn shows_a_report_with_its_records() {
        let kv = MemKv::default();
        let id = put(&kv, "example.com", "Yahoo", 86_400, 3);
        let d = get(&kv, &id).unwrap().unwrap();
        assert_eq!(d.report.totals.dmarc_fail(), 13);
        assert_eq!(d.records.len(), 1);
        assert!(get(&kv, "0123456789abcdef").unwrap().is_none());
        assert!(get(&kv, "../etc").unwrap().is_none());
        assert!(
            Filter {
                domain: Some("Example.com".into()),
                ..Filter::default()
            }
            .check()
            .is_err()
        );
    }
}
