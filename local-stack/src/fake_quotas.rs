//! Service Quotas and CloudWatch on one loopback endpoint, in their real protocols, for the
//! quota sync's SDK adapters: moto 5.2.5 lists no quotas of `states` and has no
//! `ListServiceQuotas`, and it cannot parse CloudWatch's Smithy RPC v2 CBOR, the only protocol
//! `aws-sdk-cloudwatch` speaks.
//!
//! - Service Quotas (AWS JSON 1.1, `X-Amz-Target: ServiceQuotasV20190624.<Operation>`):
//!   `ListServiceQuotas` and `ListAWSDefaultServiceQuotas`, paginated (`MaxResults` up to 100,
//!   `NextToken`; pages may be shorter, as AWS allows), and `GetServiceQuota`, which answers
//!   `NoSuchResourceException` for a quota without an applied value.
//! - CloudWatch (`POST /service/GraniteServiceVersion20100801/operation/GetMetricData`, CBOR):
//!   `MetricStat` queries over the datapoints put in the state, aggregated per period aligned
//!   to the epoch (Maximum, Minimum, Average, Sum, SampleCount), `ScanBy`, and CloudWatch's
//!   checks on ids, periods and the time range. Metric math is left out.
//! - Any operation can be answered `AccessDeniedException` (`denied`). Signatures are not
//!   checked, as moto does not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use ciborium::value::Value as Cbor;
use serde_json::{json, Value};
use tokio::sync::oneshot;

const SERVICE_QUOTAS_TARGET: &str = "ServiceQuotasV20190624.";
const GET_METRIC_DATA_PATH: &str = "/service/GraniteServiceVersion20100801/operation/GetMetricData";

/// A quota as Service Quotas lists it (service code `states`).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeQuota {
    /// `L-…`.
    pub code: String,
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// A CloudWatch datapoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Datapoint {
    /// `AWS/States`, ...
    pub namespace: String,
    /// The metric's name.
    pub metric: String,
    /// Its dimensions, name → value.
    pub dimensions: BTreeMap<String, String>,
    /// Seconds since the epoch.
    pub timestamp: f64,
    /// The value.
    pub value: f64,
}

/// What the endpoint answers, and what it was asked.
#[derive(Debug, Clone)]
pub struct QuotaState {
    /// `ListServiceQuotas` / `GetServiceQuota` (applied values).
    pub applied: Vec<FakeQuota>,
    /// `ListAWSDefaultServiceQuotas`.
    pub defaults: Vec<FakeQuota>,
    /// Quotas per page when the request sets no `MaxResults` (at most 100).
    pub page_size: usize,
    /// `GetMetricData`'s datapoints.
    pub datapoints: Vec<Datapoint>,
    /// Operations answered `AccessDeniedException`.
    pub denied: Vec<String>,
    /// The operations called, in order.
    pub calls: Vec<String>,
}

impl Default for QuotaState {
    fn default() -> QuotaState {
        QuotaState {
            applied: Vec::new(),
            defaults: Vec::new(),
            page_size: 100,
            datapoints: Vec::new(),
            denied: Vec::new(),
            calls: Vec::new(),
        }
    }
}

/// The running endpoint; stops when dropped.
pub struct FakeQuotas {
    endpoint: String,
    state: Arc<Mutex<QuotaState>>,
    _shutdown: oneshot::Sender<()>,
}

impl FakeQuotas {
    /// Serves `state` on a free loopback port.
    pub async fn start(state: QuotaState) -> Result<FakeQuotas, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("fake quotas: bind: {e}"))?;
        let endpoint = format!("http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let state = Arc::new(Mutex::new(state));
        let shared = state.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, uri: Uri, body: Bytes| {
            let state = shared.clone();
            async move { handle(&state, &headers, &uri, &body) }
        });
        let (shutdown, stopped) = oneshot::channel();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeQuotas {
            endpoint,
            state,
            _shutdown: shutdown,
        })
    }

    /// The endpoint URL (`AWS_ENDPOINT_URL_SERVICE_QUOTAS`, `AWS_ENDPOINT_URL_CLOUDWATCH`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The state, to change answers or read the calls.
    pub fn state(&self) -> MutexGuard<'_, QuotaState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn handle(state: &Mutex<QuotaState>, headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Response {
    let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    if let Some(operation) = target.strip_prefix(SERVICE_QUOTAS_TARGET) {
        state.calls.push(operation.to_string());
        if state.denied.iter().any(|d| d == operation) {
            return json_error(
                "AccessDeniedException",
                "You do not have sufficient access to perform this action.",
            );
        }
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        return service_quotas(&state, operation, &request);
    }
    if uri.path() == GET_METRIC_DATA_PATH {
        state.calls.push("GetMetricData".into());
        if state.denied.iter().any(|d| d == "GetMetricData") {
            return cbor_error(
                "AccessDenied",
                "User is not authorized to perform: cloudwatch:GetMetricData",
            );
        }
        return match ciborium::from_reader::<Cbor, _>(body) {
            Ok(request) => get_metric_data(&state, &request),
            Err(e) => cbor_error("SerializationException", &format!("not CBOR: {e}")),
        };
    }
    (
        StatusCode::NOT_FOUND,
        format!("fake quotas: no operation at {uri} ({target:?})"),
    )
        .into_response()
}

// ---------------------------------------------------------------- Service Quotas (JSON 1.1)

fn json_response(status: StatusCode, body: Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    response
}

fn json_error(code: &str, message: &str) -> Response {
    json_response(StatusCode::BAD_REQUEST, json!({"__type": code, "message": message}))
}

fn quota_json(q: &FakeQuota) -> Value {
    json!({
        "ServiceCode": "states",
        "ServiceName": "AWS Step Functions",
        "QuotaArn": format!("arn:aws:servicequotas:us-east-1:123456789012:states/{}", q.code),
        "QuotaCode": q.code,
        "QuotaName": q.name,
        "Value": q.value,
        "Unit": "None",
        "Adjustable": true,
        "GlobalQuota": false,
    })
}

fn service_quotas(state: &QuotaState, operation: &str, request: &Value) -> Response {
    let Some(service_code) = request["ServiceCode"].as_str().filter(|s| !s.is_empty()) else {
        return json_error(
            "ValidationException",
            "1 validation error detected: ServiceCode must not be null",
        );
    };
    let quotas = |list: &[FakeQuota]| -> Vec<FakeQuota> {
        if service_code == "states" {
            list.to_vec()
        } else {
            Vec::new()
        }
    };
    match operation {
        "ListServiceQuotas" => page(&quotas(&state.applied), request, state.page_size),
        "ListAWSDefaultServiceQuotas" => page(&quotas(&state.defaults), request, state.page_size),
        "GetServiceQuota" => {
            let code = request["QuotaCode"].as_str().unwrap_or("");
            match quotas(&state.applied).iter().find(|q| q.code == code) {
                Some(q) => json_response(StatusCode::OK, json!({"Quota": quota_json(q)})),
                None => json_error(
                    "NoSuchResourceException",
                    "The request failed because the specified resource does not exist.",
                ),
            }
        }
        other => json_error("UnknownOperationException", &format!("{other} is not served here")),
    }
}

fn page(quotas: &[FakeQuota], request: &Value, page_size: usize) -> Response {
    let max = match request.get("MaxResults").and_then(Value::as_u64) {
        Some(n) if (1..=100).contains(&n) => n as usize,
        Some(n) => {
            return json_error(
                "ValidationException",
                &format!("MaxResults {n} is not within 1 and 100"),
            )
        }
        None => page_size.clamp(1, 100),
    };
    let start = match request.get("NextToken").and_then(Value::as_str) {
        None => 0,
        Some(token) => match token.parse::<usize>() {
            Ok(at) if at <= quotas.len() => at,
            _ => return json_error("InvalidPaginationTokenException", "Invalid pagination token"),
        },
    };
    let end = (start + max).min(quotas.len());
    let mut body = json!({"Quotas": quotas[start..end].iter().map(quota_json).collect::<Vec<_>>()});
    if end < quotas.len() {
        body["NextToken"] = json!(end.to_string());
    }
    json_response(StatusCode::OK, body)
}

// ---------------------------------------------------------------- CloudWatch (RPC v2 CBOR)

fn cbor_response(status: StatusCode, body: Cbor) -> Response {
    let mut bytes = Vec::new();
    if ciborium::into_writer(&body, &mut bytes).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut response = (status, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/cbor"),
    );
    headers.insert("smithy-protocol", axum::http::HeaderValue::from_static("rpc-v2-cbor"));
    response
}

fn cbor_error(code: &str, message: &str) -> Response {
    let body = Cbor::Map(vec![
        (Cbor::Text("__type".into()), Cbor::Text(code.into())),
        (Cbor::Text("message".into()), Cbor::Text(message.into())),
    ]);
    cbor_response(StatusCode::BAD_REQUEST, body)
}

fn field<'a>(map: &'a Cbor, name: &str) -> Option<&'a Cbor> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(name))
        .map(|(_, v)| v)
}

fn text<'a>(map: &'a Cbor, name: &str) -> Option<&'a str> {
    field(map, name)?.as_text()
}

/// A number or a Smithy timestamp (tag 1, epoch seconds) as `f64`.
fn number(value: &Cbor) -> Option<f64> {
    match value {
        Cbor::Tag(1, inner) => number(inner),
        Cbor::Integer(i) => i128::from(*i).to_string().parse().ok(),
        Cbor::Float(f) => Some(*f),
        _ => None,
    }
}

fn get_metric_data(state: &QuotaState, request: &Cbor) -> Response {
    let invalid = |message: String| cbor_error("InvalidParameterValue", &message);
    let (Some(start), Some(end)) = (
        field(request, "StartTime").and_then(number),
        field(request, "EndTime").and_then(number),
    ) else {
        return invalid("StartTime and EndTime are required".into());
    };
    if start >= end {
        return invalid("The parameter StartTime must be less than the parameter EndTime.".into());
    }
    let queries = field(request, "MetricDataQueries")
        .and_then(Cbor::as_array)
        .cloned()
        .unwrap_or_default();
    if queries.is_empty() || queries.len() > 500 {
        return invalid(format!(
            "MetricDataQueries must hold 1 to 500 queries, got {}",
            queries.len()
        ));
    }
    let ascending = text(request, "ScanBy") == Some("TimestampAscending");
    let mut results = Vec::new();
    for query in &queries {
        let id = text(query, "Id").unwrap_or("");
        let id_ok = id.starts_with(|c: char| c.is_ascii_lowercase())
            && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !id_ok {
            return invalid(format!(
                "The value {id:?} for parameter MetricDataQueries.member.Id is invalid."
            ));
        }
        let Some(stat) = field(query, "MetricStat") else {
            return invalid("metric math is not served by this fake: give a MetricStat".into());
        };
        let period = field(stat, "Period").and_then(number).unwrap_or(0.0);
        let period_ok = [1.0, 5.0, 10.0, 20.0, 30.0].contains(&period) || (period >= 60.0 && period % 60.0 == 0.0);
        if !period_ok {
            return invalid(format!(
                "The parameter Period must be 1, 5, 10, 20, 30 or a multiple of 60, got {period}"
            ));
        }
        let metric = field(stat, "Metric");
        let wanted = Datapoint {
            namespace: metric.and_then(|m| text(m, "Namespace")).unwrap_or("").to_string(),
            metric: metric.and_then(|m| text(m, "MetricName")).unwrap_or("").to_string(),
            dimensions: metric
                .and_then(|m| field(m, "Dimensions"))
                .and_then(Cbor::as_array)
                .into_iter()
                .flatten()
                .filter_map(|d| Some((text(d, "Name")?.to_string(), text(d, "Value")?.to_string())))
                .collect(),
            timestamp: 0.0,
            value: 0.0,
        };
        let mut buckets: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for point in &state.datapoints {
            let same = point.namespace == wanted.namespace
                && point.metric == wanted.metric
                && point.dimensions == wanted.dimensions;
            if same && point.timestamp >= start && point.timestamp < end {
                let bucket = (point.timestamp / period).floor() as i64;
                buckets.entry(bucket).or_default().push(point.value);
            }
        }
        let statistic = text(stat, "Stat").unwrap_or("");
        let mut series: Vec<(f64, f64)> = Vec::new();
        for (bucket, values) in buckets {
            let value = match statistic {
                "Maximum" => values.iter().copied().fold(f64::MIN, f64::max),
                "Minimum" => values.iter().copied().fold(f64::MAX, f64::min),
                "Sum" => values.iter().sum(),
                "Average" => values.iter().sum::<f64>() / values.len() as f64,
                "SampleCount" => values.len() as f64,
                other => return invalid(format!("The statistic {other:?} is not served by this fake")),
            };
            series.push((bucket as f64 * period, value));
        }
        if !ascending {
            series.reverse();
        }
        let timestamps = series
            .iter()
            .map(|(t, _)| Cbor::Tag(1, Box::new(Cbor::Float(*t))))
            .collect();
        let values = series.iter().map(|(_, v)| Cbor::Float(*v)).collect();
        results.push(Cbor::Map(vec![
            (Cbor::Text("Id".into()), Cbor::Text(id.into())),
            (Cbor::Text("Label".into()), Cbor::Text(wanted.metric.clone())),
            (Cbor::Text("Timestamps".into()), Cbor::Array(timestamps)),
            (Cbor::Text("Values".into()), Cbor::Array(values)),
            (Cbor::Text("StatusCode".into()), Cbor::Text("Complete".into())),
        ]));
    }
    let body = Cbor::Map(vec![
        (Cbor::Text("MetricDataResults".into()), Cbor::Array(results)),
        (Cbor::Text("Messages".into()), Cbor::Array(Vec::new())),
    ]);
    cbor_response(StatusCode::OK, body)
}
