//! Invoking the function through a local Lambda invoke endpoint (`cargo lambda watch`):
//! `POST <endpoint>/2015-03-31/functions/<name>/invocations` with the event as the body.

use super::response::InvokeOutcome;
use super::runner::Invoker;
use crate::DisplayErrorContext;

/// The header by which the Lambda Invoke API flags a function error.
pub const FUNCTION_ERROR_HEADER: &str = "x-amz-function-error";

/// The invocation URL of a function at an endpoint such as `http://127.0.0.1:9000`.
pub fn invocation_url(endpoint: &str, function_name: &str) -> String {
    format!(
        "{}/2015-03-31/functions/{}/invocations",
        endpoint.trim_end_matches('/'),
        function_name
    )
}

/// Invokes over HTTP. No timeout of its own: the runner bounds each call with the function
/// timeout. Proxy settings from the environment are ignored (the endpoint is local).
#[derive(Clone, Debug)]
pub struct HttpInvoker {
    client: reqwest::Client,
    url: String,
}

impl HttpInvoker {
    /// An invoker of `function_name` at `endpoint`.
    pub fn new(endpoint: &str, function_name: &str) -> Result<HttpInvoker, String> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpInvoker {
            client,
            url: invocation_url(endpoint, function_name),
        })
    }

    /// The invocation URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Invoker for HttpInvoker {
    async fn invoke(&self, _poller: usize, payload: Vec<u8>) -> InvokeOutcome {
        let response = match self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(payload)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return InvokeOutcome::Transport(DisplayErrorContext(&e).to_string()),
        };
        let status = response.status().as_u16();
        let function_error = response
            .headers()
            .get(FUNCTION_ERROR_HEADER)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match response.bytes().await {
            Ok(body) => InvokeOutcome::Response {
                status,
                function_error,
                body: body.to_vec(),
            },
            Err(e) => InvokeOutcome::Transport(format!("reading the response: {}", DisplayErrorContext(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            invocation_url("http://127.0.0.1:9000/", "starter"),
            "http://127.0.0.1:9000/2015-03-31/functions/starter/invocations"
        );
    }
}
