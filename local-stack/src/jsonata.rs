//! JSONata, as Step Functions evaluates it in a state of `"QueryLanguage": "JSONata"`: every string
//! of a value written `{% expression %}` is replaced by the expression's value, with the state's
//! variables bound (`$states`, and the `Assign`ed ones). The evaluator is the `jsonata-python`
//! package of the project's `.venv` (requirements-dev.txt), a port of the reference
//! implementation: a test sends a sample state's requests as Step Functions would build them.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::paths::venv_bin;

/// Replaces `{% … %}` strings one by one; the variables are bound to every expression.
const SCRIPT: &str = r#"
import json, sys, jsonata
request = json.load(sys.stdin)
def walk(value):
    if isinstance(value, dict):
        return {k: walk(v) for k, v in value.items()}
    if isinstance(value, list):
        return [walk(v) for v in value]
    if isinstance(value, str) and value.startswith("{%") and value.endswith("%}"):
        expression = jsonata.Jsonata(value[2:-2].strip())
        for name, bound in request["variables"].items():
            expression.assign(name, bound)
        return expression.evaluate(None)
    return value
json.dump(walk(request["template"]), sys.stdout)
"#;

/// `template` with each `{% expression %}` string evaluated, `variables` (`{"states": {...},
/// "slot": ...}`) bound as `$states`, `$slot`, ...
pub fn evaluate(template: &Value, variables: &Value) -> Result<Value, String> {
    let python = venv_bin().join("python");
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e} (run `make venv`)", python.display()))?;
    let request = serde_json::json!({"template": template, "variables": variables});
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(request.to_string().as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!("jsonata: {}", String::from_utf8_lossy(&out.stderr)));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("jsonata's output: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_are_evaluated_with_their_variables_and_the_rest_is_kept() {
        let template = serde_json::json!({
            "name": "{% 'holder#' & $states.context.Execution.Name %}",
            "n": {"N": "{% $string($number($slot.shard.N) + 1) %}"},
            "kept": ["plain", 7]
        });
        let variables = serde_json::json!({
            "states": {"context": {"Execution": {"Name": "ex-1"}}},
            "slot": {"shard": {"N": "3"}}
        });
        assert_eq!(
            evaluate(&template, &variables).unwrap(),
            serde_json::json!({"name": "holder#ex-1", "n": {"N": "4"}, "kept": ["plain", 7]})
        );
    }
}
