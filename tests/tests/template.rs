//! Invariants of the SAM template (`template.yaml`) that cfn-lint cannot know about.
//!
//! The template is parsed with serde_yaml. CloudFormation's short-form tags (`!Ref`, `!GetAtt`,
//! `!Sub`, ...) arrive as tagged values and are rewritten to their long form (`{"Ref": ..}`,
//! `{"Fn::GetAtt": [..]}`), so the checks below see one shape. Values are resolved with the
//! parameters' defaults (`Ref` to a parameter, `Fn::FindInMap`), or with overrides
//! (`Template::with`), under which `Conditions`, `Fn::If` and `AWS::NoValue` are evaluated as
//! CloudFormation would; each check is a function that returns `Err` with a reason, and the
//! `*_rejects_*` tests show that the checks do fail on a broken template.

use local_stack::paths::workspace_root;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Environment variables the Lambda runtime itself reads (set through LoggingConfig, or by hand).
const RUNTIME_VARIABLES: &[&str] = &["AWS_LAMBDA_LOG_FORMAT", "AWS_LAMBDA_LOG_LEVEL"];

/// Managed policies the function's role may carry: the logs and X-Ray basics.
const ALLOWED_MANAGED_POLICIES: &[&str] = &[
    ":iam::aws:policy/service-role/AWSLambdaBasicExecutionRole",
    ":iam::aws:policy/AWSXrayWriteOnlyAccess",
];

/// Converts a YAML value to JSON, rewriting CloudFormation short-form tags to their long form.
fn to_json(value: serde_yaml::Value) -> Value {
    use serde_yaml::Value as Y;
    match value {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().expect("a YAML number is an i64, u64 or f64"))
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Y::Mapping(mapping) => Value::Object(
            mapping
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s,
                        Y::Number(n) => n.to_string(),
                        Y::Bool(b) => b.to_string(),
                        other => panic!("unsupported mapping key {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        Y::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!');
            let inner = to_json(tagged.value);
            let (key, inner) = match name {
                "Ref" | "Condition" => (name.to_string(), inner),
                // `!GetAtt Resource.Attribute` is a string; the long form is a list.
                "GetAtt" => match inner {
                    Value::String(s) => {
                        let (resource, attribute) = s
                            .split_once('.')
                            .unwrap_or_else(|| panic!("!GetAtt {s:?} has no attribute"));
                        ("Fn::GetAtt".to_string(), Value::from(vec![resource, attribute]))
                    }
                    other => ("Fn::GetAtt".to_string(), other),
                },
                other => (format!("Fn::{other}"), inner),
            };
            Value::Object(Map::from_iter([(key, inner)]))
        }
    }
}

fn load_template() -> Value {
    let path = workspace_root().join("template.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    to_json(yaml)
}

/// The template plus the parameter values to resolve with (defaults, optionally overridden).
struct Template {
    doc: Value,
    params: BTreeMap<String, Value>,
}

impl Template {
    fn new(doc: Value) -> Template {
        let mut params = BTreeMap::new();
        if let Some(parameters) = doc["Parameters"].as_object() {
            for (name, p) in parameters {
                if let Some(default) = p.get("Default") {
                    params.insert(name.clone(), default.clone());
                }
            }
        }
        Template { doc, params }
    }

    fn load() -> Template {
        Template::new(load_template())
    }

    fn with(mut self, name: &str, value: Value) -> Template {
        self.params.insert(name.to_string(), value);
        self
    }

    fn resources(&self) -> &Map<String, Value> {
        self.doc["Resources"].as_object().expect("Resources is a mapping")
    }

    fn resources_of_type(&self, kind: &str) -> Vec<(&String, &Value)> {
        self.resources().iter().filter(|(_, r)| r["Type"] == kind).collect()
    }

    /// The single resource of `kind`.
    fn only(&self, kind: &str) -> Result<(&String, &Value), String> {
        let all = self.resources_of_type(kind);
        match all.as_slice() {
            [one] => Ok(*one),
            _ => Err(format!("expected exactly one {kind}, found {}", all.len())),
        }
    }

    fn function(&self) -> Result<&Value, String> {
        Ok(self.starter()?.1)
    }

    /// The starter: the one function with an SQS event (the quota sync has a schedule).
    fn starter(&self) -> Result<(&String, &Value), String> {
        let starters: Vec<_> = self
            .resources_of_type("AWS::Serverless::Function")
            .into_iter()
            .filter(|(_, f)| {
                f["Properties"]["Events"]
                    .as_object()
                    .is_some_and(|events| events.values().any(|e| e["Type"] == "SQS"))
            })
            .collect();
        match starters.as_slice() {
            [one] => Ok(*one),
            _ => Err(format!(
                "expected one function with an SQS event, found {}",
                starters.len()
            )),
        }
    }

    /// The function's single SQS event (the event source mapping).
    fn sqs_event(&self) -> Result<&Value, String> {
        let events = self.function()?["Properties"]["Events"]
            .as_object()
            .ok_or("the function has no Events")?;
        let sqs: Vec<_> = events.values().filter(|e| e["Type"] == "SQS").collect();
        match sqs.as_slice() {
            [one] => Ok(&one["Properties"]),
            _ => Err(format!("expected exactly one SQS event, found {}", sqs.len())),
        }
    }

    /// The queue resource the SQS event reads (`Queue: !GetAtt X.Arn`).
    fn work_queue(&self) -> Result<&Value, String> {
        let queue = &self.sqs_event()?["Queue"];
        let name = logical_id(queue).ok_or_else(|| format!("the SQS event's Queue {queue} names no resource"))?;
        self.resources().get(name).ok_or_else(|| format!("no resource {name}"))
    }

    /// Resolves a value to a literal: scalars, `Ref` to a parameter, `Fn::FindInMap`.
    fn resolve(&self, value: &Value) -> Result<Value, String> {
        match value {
            Value::Object(o) if o.len() == 1 && o.contains_key("Ref") => {
                let name = o["Ref"].as_str().ok_or("Ref of a non-string")?;
                self.params
                    .get(name)
                    .cloned()
                    .ok_or_else(|| format!("Ref {name} is not a parameter with a value"))
            }
            Value::Object(o) if o.len() == 1 && o.contains_key("Fn::FindInMap") => {
                let args = o["Fn::FindInMap"].as_array().ok_or("FindInMap takes a list")?;
                let [map, top, second] = args.as_slice() else {
                    return Err("FindInMap takes three arguments".into());
                };
                let key = |v: &Value| -> Result<String, String> {
                    match self.resolve(v)? {
                        Value::String(s) => Ok(s),
                        Value::Number(n) => Ok(n.to_string()),
                        other => Err(format!("FindInMap key {other}")),
                    }
                };
                let (map, top, second) = (key(map)?, key(top)?, key(second)?);
                self.doc["Mappings"][&map][&top]
                    .get(&second)
                    .cloned()
                    .ok_or_else(|| format!("Mappings.{map}.{top}.{second} does not exist"))
            }
            Value::Object(_) | Value::Array(_) => Err(format!("cannot resolve {value}")),
            scalar => Ok(scalar.clone()),
        }
    }

    /// Whether the template's condition `name` holds with these parameters.
    fn condition(&self, name: &str) -> Result<bool, String> {
        let expression = self.doc["Conditions"]
            .get(name)
            .ok_or_else(|| format!("no condition {name}"))?;
        self.holds(expression)
    }

    /// Evaluates a condition expression: `Fn::Equals`, `Fn::Not`, `Fn::And`, `Fn::Or`, `Condition`.
    fn holds(&self, expression: &Value) -> Result<bool, String> {
        let (function, args) = match expression.as_object() {
            Some(o) if o.len() == 1 => o.iter().next().expect("one entry"),
            _ => return Err(format!("condition {expression} is not a function")),
        };
        if function == "Condition" {
            return self.condition(args.as_str().ok_or("Condition of a non-string")?);
        }
        let args = args.as_array().ok_or_else(|| format!("{function} takes a list"))?;
        match (function.as_str(), args.as_slice()) {
            ("Fn::Equals", [a, b]) => Ok(text(&self.resolve(a)?) == text(&self.resolve(b)?)),
            ("Fn::Not", [a]) => Ok(!self.holds(a)?),
            ("Fn::And", all) => all.iter().try_fold(true, |acc, c| Ok(acc && self.holds(c)?)),
            ("Fn::Or", any) => any.iter().try_fold(false, |acc, c| Ok(acc || self.holds(c)?)),
            _ => Err(format!("unsupported condition {expression}")),
        }
    }

    /// `value` as CloudFormation deploys it with these parameters: each `Fn::If` replaced by its
    /// chosen branch, `AWS::NoValue` removed (`None` when `value` itself is removed).
    fn evaluate(&self, value: &Value) -> Result<Option<Value>, String> {
        match value {
            Value::Object(o) if o.len() == 1 && o.get("Ref") == Some(&Value::from("AWS::NoValue")) => Ok(None),
            Value::Object(o) if o.len() == 1 && o.contains_key("Fn::If") => {
                let args = o["Fn::If"].as_array().ok_or("Fn::If takes a list")?;
                let [condition, yes, no] = args.as_slice() else {
                    return Err("Fn::If takes three arguments".into());
                };
                let name = condition.as_str().ok_or("Fn::If names a condition")?;
                self.evaluate(if self.condition(name)? { yes } else { no })
            }
            Value::Object(o) => {
                let mut out = Map::new();
                for (key, v) in o {
                    if let Some(v) = self.evaluate(v)? {
                        out.insert(key.clone(), v);
                    }
                }
                Ok(Some(Value::Object(out)))
            }
            Value::Array(items) => {
                let mut out = Vec::new();
                for v in items {
                    out.extend(self.evaluate(v)?);
                }
                Ok(Some(Value::Array(out)))
            }
            scalar => Ok(Some(scalar.clone())),
        }
    }

    /// The resources CloudFormation creates with these parameters (their `Condition` holds),
    /// evaluated.
    fn deployed(&self) -> Result<Vec<(String, Value)>, String> {
        let mut out = Vec::new();
        for (name, resource) in self.resources() {
            if let Some(condition) = resource.get("Condition") {
                let condition = condition.as_str().ok_or("a resource Condition is a name")?;
                if !self.condition(condition)? {
                    continue;
                }
            }
            out.extend(self.evaluate(resource)?.map(|r| (name.clone(), r)));
        }
        Ok(out)
    }

    /// The deployed resources (see [`Template::deployed`]) of `kind`.
    fn deployed_of_type(&self, kind: &str) -> Result<Vec<(String, Value)>, String> {
        Ok(self
            .deployed()?
            .into_iter()
            .filter(|(_, r)| r["Type"] == kind)
            .collect())
    }

    /// A `Fn::Sub` string with the parameters substituted (pseudo-parameters and attributes stay).
    fn substitute(&self, template: &str) -> String {
        self.params.iter().fold(template.to_string(), |s, (name, value)| {
            s.replace(&format!("${{{name}}}"), &text(value))
        })
    }

    fn number(&self, value: &Value) -> Result<f64, String> {
        match self.resolve(value)? {
            Value::Number(n) => Ok(n.as_f64().expect("finite")),
            Value::String(s) => s.parse().map_err(|_| format!("{s:?} is not a number")),
            other => Err(format!("{other} is not a number")),
        }
    }

    /// The values a Number parameter may take that matter for a bound: its AllowedValues, or its
    /// default and its MinValue/MaxValue.
    fn candidates(&self, name: &str) -> Vec<Value> {
        let p = &self.doc["Parameters"][name];
        if let Some(allowed) = p["AllowedValues"].as_array() {
            return allowed.clone();
        }
        ["Default", "MinValue", "MaxValue"]
            .iter()
            .filter_map(|k| p.get(*k).cloned())
            .collect()
    }
}

/// A scalar as CloudFormation compares it: a string, numbers as written.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The logical id named by `!Ref X` or `!GetAtt X.Attr`.
fn logical_id(value: &Value) -> Option<&str> {
    value
        .get("Ref")
        .and_then(Value::as_str)
        .or_else(|| value.get("Fn::GetAtt")?.get(0)?.as_str())
}

/// The parameter named by `!Ref P`, when `value` is one.
fn parameter_ref<'a>(t: &Template, value: &'a Value) -> Option<&'a str> {
    let name = value.get("Ref")?.as_str()?;
    t.doc["Parameters"].get(name).map(|_| name)
}

// ------------------------------------------------------------------------------------------ checks

/// Visibility timeout >= 6 x function timeout + batching window, with the defaults, and for every
/// allowed FunctionTimeout with the largest allowed batching window.
fn check_visibility(t: &Template) -> Result<(), String> {
    let holds = |t: &Template| -> Result<(f64, f64, f64), String> {
        let visibility = t.number(&t.work_queue()?["Properties"]["VisibilityTimeout"])?;
        let timeout = t.number(&t.function()?["Properties"]["Timeout"])?;
        // The window may depend on a condition (none with FIFO queues).
        let event = t.evaluate(t.sqs_event()?)?.unwrap_or_default();
        let window = match event.get("MaximumBatchingWindowInSeconds") {
            Some(w) => t.number(w)?,
            None => 0.0,
        };
        if visibility >= 6.0 * timeout + window {
            Ok((visibility, timeout, window))
        } else {
            Err(format!(
                "visibility timeout {visibility} < 6 x timeout {timeout} + window {window}"
            ))
        }
    };
    holds(t)?;
    // The other parameter values the bound must hold for.
    let timeout_param = parameter_ref(t, &t.function()?["Properties"]["Timeout"]);
    let event = t.evaluate(t.sqs_event()?)?.unwrap_or_default();
    let window_param = event
        .get("MaximumBatchingWindowInSeconds")
        .and_then(|w| parameter_ref(t, w))
        .map(str::to_string);
    let window_param = window_param.as_deref();
    // `None`: that value is not a parameter, so it stays as the template has it.
    let values = |p: Option<&str>| -> Vec<Option<Value>> {
        p.map(|p| t.candidates(p).into_iter().map(Some).collect())
            .unwrap_or_else(|| vec![None])
    };
    for timeout in values(timeout_param) {
        for window in values(window_param) {
            let mut varied = Template {
                doc: t.doc.clone(),
                params: t.params.clone(),
            };
            for (param, value) in [(timeout_param, &timeout), (window_param, &window)] {
                if let (Some(param), Some(value)) = (param, value) {
                    varied.params.insert(param.to_string(), value.clone());
                }
            }
            holds(&varied).map_err(|e| format!("with FunctionTimeout {timeout:?}, window {window:?}: {e}"))?;
        }
    }
    Ok(())
}

/// The mapping's scaling as the parameters ask. On-demand (`ProvisionedPollers` 0, the default):
/// ScalingConfig.MaximumConcurrency <= reserved concurrency, the function is told the same N, and
/// no ProvisionedPollerConfig. Provisioned mode (`ProvisionedPollers` >= 2): no ScalingConfig
/// (Lambda rejects it with provisioned mode), ProvisionedPollerConfig wired to ProvisionedPollers
/// and MaximumPollers within AWS's SQS ranges, and reserved concurrency >= 10 x MaximumPollers
/// (each poller runs up to 10 concurrent invokes; above the reserved concurrency they would be
/// throttled, and a throttled invocation counts as a receive).
fn check_concurrency(t: &Template) -> Result<(), String> {
    let props = t.evaluate(&t.function()?["Properties"])?.unwrap_or_default();
    let event = t.evaluate(t.sqs_event()?)?.unwrap_or_default();
    let reserved = t.number(
        props
            .get("ReservedConcurrentExecutions")
            .ok_or("the function has no ReservedConcurrentExecutions")?,
    )?;
    let told = t.number(
        props["Environment"]["Variables"]
            .get("MAX_CONCURRENCY")
            .ok_or("MAX_CONCURRENCY is not set")?,
    )?;
    let provisioned = match t.params.get("ProvisionedPollers") {
        Some(p) => t.number(p)?,
        None => 0.0,
    };
    if provisioned == 0.0 {
        if let Some(config) = event.get("ProvisionedPollerConfig") {
            return Err(format!(
                "ProvisionedPollers 0 still sets ProvisionedPollerConfig {config}"
            ));
        }
        let maximum = t.number(
            event["ScalingConfig"]
                .get("MaximumConcurrency")
                .ok_or("the SQS event has no ScalingConfig.MaximumConcurrency")?,
        )?;
        if !(2.0..=1000.0).contains(&maximum) {
            return Err(format!("MaximumConcurrency {maximum} is outside 2..=1000"));
        }
        if maximum > reserved {
            return Err(format!(
                "MaximumConcurrency {maximum} > ReservedConcurrentExecutions {reserved}"
            ));
        }
        if told != maximum {
            return Err(format!(
                "MAX_CONCURRENCY {told} differs from MaximumConcurrency {maximum}"
            ));
        }
        return Ok(());
    }
    if let Some(scaling) = event.get("ScalingConfig") {
        return Err(format!(
            "ProvisionedPollers {provisioned} keeps ScalingConfig {scaling} (Lambda rejects both)"
        ));
    }
    let config = event
        .get("ProvisionedPollerConfig")
        .ok_or_else(|| format!("ProvisionedPollers {provisioned} sets no ProvisionedPollerConfig"))?;
    let pollers = |key: &str| -> Result<f64, String> {
        t.number(
            config
                .get(key)
                .ok_or_else(|| format!("ProvisionedPollerConfig has no {key}"))?,
        )
    };
    let (minimum, maximum) = (pollers("MinimumPollers")?, pollers("MaximumPollers")?);
    if minimum != provisioned {
        return Err(format!(
            "MinimumPollers {minimum} is not ProvisionedPollers {provisioned}"
        ));
    }
    let asked = t.number(t.params.get("MaximumPollers").ok_or("no MaximumPollers parameter")?)?;
    if maximum != asked {
        return Err(format!(
            "MaximumPollers {maximum} is not the MaximumPollers parameter {asked}"
        ));
    }
    // SQS: MinimumPollers 2 to 200, MaximumPollers 2 to 2000 (CloudFormation's bound).
    if !(2.0..=200.0).contains(&minimum) {
        return Err(format!("MinimumPollers {minimum} is outside 2..=200"));
    }
    if !(2.0..=2000.0).contains(&maximum) {
        return Err(format!("MaximumPollers {maximum} is outside 2..=2000"));
    }
    if minimum > maximum {
        return Err(format!("MinimumPollers {minimum} > MaximumPollers {maximum}"));
    }
    if reserved < 10.0 * maximum {
        return Err(format!(
            "ReservedConcurrentExecutions {reserved} < 10 x MaximumPollers {maximum}: invocations would be throttled"
        ));
    }
    // The fallback's static split must count every instance that can run.
    if told < reserved {
        return Err(format!(
            "MAX_CONCURRENCY {told} < ReservedConcurrentExecutions {reserved}: the fallback split overspends"
        ));
    }
    Ok(())
}

/// Provisioned mode's parameters and rules: the parameters' bounds fit AWS's SQS ranges and the
/// reserved concurrency (MaxConcurrency's maximum >= 10 x MaximumPollers' maximum), and the Rules
/// reject ProvisionedPollers 1, and ProvisionedPollers > 0 without coordinated mode, only.
fn check_provisioned_mode(t: &Template) -> Result<(), String> {
    let bound = |p: &str, k: &str| -> Result<f64, String> {
        t.doc["Parameters"][p][k]
            .as_f64()
            .ok_or_else(|| format!("parameter {p} has no {k}"))
    };
    // MinimumPollers <= MaximumPollers: no ProvisionedPollers above MaximumPollers' maximum.
    let most = bound("MaximumPollers", "MaxValue")?.min(200.0);
    if bound("ProvisionedPollers", "MinValue")? != 0.0 || bound("ProvisionedPollers", "MaxValue")? > most {
        return Err(format!("ProvisionedPollers must allow 0 and at most {most}"));
    }
    if text(&t.doc["Parameters"]["ProvisionedPollers"]["Default"]) != "0" {
        return Err("ProvisionedPollers does not default to 0 (on-demand polling)".into());
    }
    if bound("MaximumPollers", "MinValue")? < 2.0 || bound("MaximumPollers", "MaxValue")? > 2000.0 {
        return Err("MaximumPollers must stay within 2..=2000".into());
    }
    if bound("MaxConcurrency", "MaxValue")? < 10.0 * bound("MaximumPollers", "MaxValue")? {
        return Err("MaximumPollers allows more pollers than MaxConcurrency can serve (10 each)".into());
    }
    let with = |pollers: i64, table: &str| {
        Template {
            doc: t.doc.clone(),
            params: t.params.clone(),
        }
        .with("ProvisionedPollers", pollers.into())
        .with("CoordinationTable", table.into())
    };
    for (pollers, table, accepted) in [
        (0, "None", true),
        (0, "Create", true),
        (2, "Create", true),
        (100, "shared-budget", true),
        (1, "Create", false),
        (2, "None", false),
        (100, "None", false),
    ] {
        match (check_rules(&with(pollers, table)), accepted) {
            (Ok(()), false) => {
                return Err(format!(
                    "ProvisionedPollers {pollers} with CoordinationTable {table} passes the Rules"
                ))
            }
            (Err(e), true) => return Err(format!("ProvisionedPollers {pollers}, CoordinationTable {table}: {e}")),
            _ => {}
        }
    }
    Ok(())
}

/// The work queue's redrive: maxReceiveCount >= 5 (default and smallest allowed value).
fn check_max_receive_count(t: &Template) -> Result<(), String> {
    let policy = &t.work_queue()?["Properties"]["RedrivePolicy"];
    let count = policy
        .get("maxReceiveCount")
        .ok_or("the work queue has no RedrivePolicy.maxReceiveCount")?;
    if policy.get("deadLetterTargetArn").is_none() {
        return Err("the work queue's RedrivePolicy has no deadLetterTargetArn".into());
    }
    let value = t.number(count)?;
    if value < 5.0 {
        return Err(format!("maxReceiveCount {value} < 5"));
    }
    if let Some(p) = parameter_ref(t, count) {
        let min = t.doc["Parameters"][p]["MinValue"]
            .as_f64()
            .ok_or(format!("parameter {p} has no MinValue"))?;
        if min < 5.0 {
            return Err(format!("parameter {p} allows maxReceiveCount {min} < 5"));
        }
    }
    Ok(())
}

fn check_batch_item_failures(t: &Template) -> Result<(), String> {
    let types = t.sqs_event()?["FunctionResponseTypes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if types.iter().any(|v| v == "ReportBatchItemFailures") {
        Ok(())
    } else {
        Err(format!("FunctionResponseTypes {types:?} lacks ReportBatchItemFailures"))
    }
}

/// Every string inside `value` (intrinsics included), to find wildcards.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The policy statements the function's role gets from the template itself, plus its managed
/// policies: from an explicit `Role: !GetAtt R.Arn`, or from the function's inline `Policies`.
/// Evaluated with the template's parameters: a statement under a false condition is left out.
fn function_policies(t: &Template) -> Result<(Vec<Value>, Vec<Value>), String> {
    policies_of(t, t.function()?)
}

/// The policy statements and managed policies of `function`'s role (see [`function_policies`]).
fn policies_of(t: &Template, function: &Value) -> Result<(Vec<Value>, Vec<Value>), String> {
    let props = t.evaluate(&function["Properties"])?.unwrap_or_default();
    let mut statements = Vec::new();
    let mut managed = Vec::new();
    let mut documents = Vec::new();
    if let Some(role) = props.get("Role") {
        let name = logical_id(role).ok_or_else(|| format!("Role {role} is not a role of this template"))?;
        let role = t.resources().get(name).ok_or_else(|| format!("no resource {name}"))?;
        let role = t.evaluate(&role["Properties"])?.unwrap_or_default();
        for policy in role["Policies"].as_array().into_iter().flatten() {
            documents.push(policy["PolicyDocument"].clone());
        }
        managed.extend(role["ManagedPolicyArns"].as_array().cloned().unwrap_or_default());
    }
    for policy in props["Policies"].as_array().into_iter().flatten() {
        match policy {
            Value::Object(o) if o.contains_key("Statement") => documents.push(policy.clone()),
            // A managed policy name/ARN or a SAM policy template.
            other => managed.push(other.clone()),
        }
    }
    for document in documents {
        match &document["Statement"] {
            Value::Array(items) => statements.extend(items.iter().cloned()),
            Value::Object(_) => statements.push(document["Statement"].clone()),
            other => return Err(format!("policy Statement {other} is not a list")),
        }
    }
    Ok((statements, managed))
}

/// The claim-check objects' key prefix: the only place a Resource of the function's role may end
/// in a wildcard, since the keys are content hashes (`sfn-pacer/inputs/<sha256>.json`).
const CLAIM_CHECK_OBJECTS: &str = "/sfn-pacer/*";

/// Whether `resource` is the claim-check objects of one bucket (`<bucket ARN>/sfn-pacer/*`, no
/// other wildcard), in a statement of S3 object actions without wildcards.
fn is_claim_check_objects(statement: &Value, resource: &str) -> bool {
    let mut actions = Vec::new();
    strings(&statement["Action"], &mut actions);
    let bucket = resource.strip_suffix(CLAIM_CHECK_OBJECTS).unwrap_or("");
    !bucket.is_empty()
        && !bucket.contains('*')
        && ((bucket.starts_with("arn:") && bucket.contains(":s3:::"))
            || (bucket.starts_with("${") && bucket.ends_with(".Arn}")))
        && !actions.is_empty()
        && actions.iter().all(|a| a.starts_with("s3:") && !a.contains('*'))
}

fn check_least_privilege(t: &Template) -> Result<(), String> {
    let (statements, managed) = function_policies(t)?;
    if statements.is_empty() {
        return Err("the function's role has no policy statements of its own".into());
    }
    for statement in &statements {
        for key in ["NotAction", "NotResource"] {
            if statement.get(key).is_some() {
                return Err(format!("statement {statement} uses {key}"));
            }
        }
        for key in ["Action", "Resource"] {
            let value = statement
                .get(key)
                .ok_or_else(|| format!("statement {statement} has no {key}"))?;
            let mut found = Vec::new();
            strings(value, &mut found);
            let wildcard =
                |s: &&String| s.contains('*') && !(key == "Resource" && is_claim_check_objects(statement, s));
            if let Some(wild) = found.iter().find(wildcard) {
                return Err(format!("statement {} has a wildcard {key} {wild:?}", statement["Sid"]));
            }
        }
    }
    let actions: Vec<String> = statements
        .iter()
        .flat_map(|s| {
            let mut found = Vec::new();
            strings(&s["Action"], &mut found);
            found
        })
        .collect();
    if !actions.iter().any(|a| a == "states:StartExecution") {
        return Err("the role cannot call states:StartExecution".into());
    }
    for policy in &managed {
        let mut found = Vec::new();
        strings(policy, &mut found);
        let allowed = found
            .iter()
            .any(|s| ALLOWED_MANAGED_POLICIES.iter().any(|a| s.ends_with(a)));
        if !allowed {
            return Err(format!("managed policy {policy} is not one of the logs/X-Ray basics"));
        }
    }
    Ok(())
}

fn check_environment(t: &Template, known: &[&str]) -> Result<(), String> {
    let props = &t.function()?["Properties"];
    let variables = props["Environment"]["Variables"]
        .as_object()
        .ok_or("the function has no environment")?;
    for name in variables.keys() {
        if !known.contains(&name.as_str()) && !RUNTIME_VARIABLES.contains(&name.as_str()) {
            return Err(format!("environment variable {name} is not read by the function"));
        }
    }
    if !variables.contains_key("STATE_MACHINE_ARN") {
        return Err("STATE_MACHINE_ARN is not set".into());
    }
    let json_logs =
        props["LoggingConfig"]["LogFormat"] == "JSON" || variables.get("AWS_LAMBDA_LOG_FORMAT") == Some(&"JSON".into());
    if !json_logs {
        return Err("logs are not JSON (LoggingConfig.LogFormat or AWS_LAMBDA_LOG_FORMAT)".into());
    }
    Ok(())
}

/// The budget's defaults are safe for Standard in every region (refill 150/s, bucket 800).
fn check_budget_defaults(t: &Template) -> Result<(), String> {
    let variables = &t.function()?["Properties"]["Environment"]["Variables"];
    for (name, limit) in [("STARTS_PER_SECOND", 150.0), ("STARTS_BURST", 800.0)] {
        let value = t.number(variables.get(name).ok_or_else(|| format!("{name} is not set"))?)?;
        if value > limit {
            return Err(format!(
                "default {name} {value} exceeds the smallest Standard quota {limit}"
            ));
        }
    }
    Ok(())
}

fn check_queues(t: &Template) -> Result<(), String> {
    let queues = t.deployed_of_type("AWS::SQS::Queue")?;
    // With a cap, the release function's DLQ too.
    let expected = 2 + usize::from(cap_expected(t)?);
    if queues.len() != expected {
        return Err(format!(
            "expected a work queue and a DLQ (and the release function's DLQ with a cap), found {} queues",
            queues.len()
        ));
    }
    for (name, queue) in &queues {
        if queue["Properties"]["SqsManagedSseEnabled"] != true && queue["Properties"].get("KmsMasterKeyId").is_none() {
            return Err(format!("queue {name} is not encrypted"));
        }
    }
    let dlq_ref = &t.work_queue()?["Properties"]["RedrivePolicy"]["deadLetterTargetArn"];
    let dlq_name = logical_id(dlq_ref).ok_or("the work queue's DLQ is not in this template")?;
    let dlq = &t.resources()[dlq_name]["Properties"];
    if t.number(&dlq["MessageRetentionPeriod"])? != 1_209_600.0 {
        return Err(format!("DLQ {dlq_name} does not keep messages 14 days"));
    }
    if dlq["RedriveAllowPolicy"]["redrivePermission"] != "byQueue" {
        return Err(format!("DLQ {dlq_name} has no byQueue RedriveAllowPolicy"));
    }
    Ok(())
}

/// The metrics an alarm reads: its own (`Namespace`, `MetricName`, `Dimensions`), or those of its
/// metric math (`Metrics[].MetricStat.Metric`, each with its `Id`).
fn alarm_metrics(alarm: &Value) -> Vec<Value> {
    let props = &alarm["Properties"];
    if props.get("MetricName").is_some() {
        return vec![serde_json::json!({
            "Namespace": props["Namespace"],
            "MetricName": props["MetricName"],
            "Dimensions": props["Dimensions"],
        })];
    }
    props["Metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let mut metric = m.get("MetricStat")?.get("Metric")?.clone();
            metric["Id"] = m["Id"].clone();
            Some(metric)
        })
        .collect()
}

fn check_alarms(t: &Template) -> Result<(), String> {
    let mut metrics = Vec::new();
    for (name, alarm) in t.resources_of_type("AWS::CloudWatch::Alarm") {
        let mut description = Vec::new();
        strings(&alarm["Properties"]["AlarmDescription"], &mut description);
        if description.concat().trim().len() < 40 {
            return Err(format!("alarm {name} does not say what to do"));
        }
        metrics.extend(alarm_metrics(alarm).into_iter().map(|m| text(&m["MetricName"])));
    }
    for wanted in [
        "ApproximateNumberOfMessagesVisible",
        "ApproximateAgeOfOldestMessage",
        "ExecutionThrottled",
        "Throttles",
        "Errors",
    ] {
        if !metrics.iter().any(|m| m == wanted) {
            return Err(format!("no alarm on {wanted}"));
        }
    }
    Ok(())
}

/// The DynamoDB item actions the function uses on the coordination table for the budget
/// (src/aws/dynamo), and the items they may touch (`dynamodb:LeadingKeys`).
const COORDINATION_ACTIONS: &[&str] = &["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"];
const BUDGET_KEYS: &[&str] = &["quota#*"];

/// The actions of batch executions' per-message claims (Standard only): TransactWriteItems is
/// authorized per contained action, its Puts as PutItem (no ConditionCheck, so no
/// ConditionCheckItem); the claims are read back with BatchGetItem, the execution records with
/// GetItem. Sorted, as the check compares them.
const CLAIM_ACTIONS: &[&str] = &["dynamodb:BatchGetItem", "dynamodb:GetItem", "dynamodb:PutItem"];
const CLAIM_KEYS: &[&str] = &["claim#*", "execution#*"];
/// Once its start is confirmed, an execution's record is trimmed to "started" (UpdateItem), on
/// execution records only.
const STARTED_RECORD_ACTIONS: &[&str] = &["dynamodb:UpdateItem"];
const STARTED_RECORD_KEYS: &[&str] = &["execution#*"];

/// Whether the function claims messages in the table: batches (MessagesPerExecution > 1) of a
/// Standard workflow, coordinated. Decided from the parameters, not from the template's conditions.
fn claims_expected(t: &Template) -> Result<bool, String> {
    let batching = match t.params.get("MessagesPerExecution") {
        Some(n) => t.number(n)? > 1.0,
        None => false,
    };
    let standard = t.params.get("WorkflowType").map(text).as_deref() == Some("STANDARD");
    let coordinated = t.params.get("CoordinationTable").map(text).as_deref() != Some("None");
    Ok(batching && standard && coordinated)
}

/// The `dynamodb:LeadingKeys` a statement allows, sorted.
fn leading_keys(statement: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    strings(&statement["Condition"], &mut keys);
    keys.sort();
    keys
}

/// One DynamoDB statement: an Allow of exactly `actions` on exactly the table `arn`, with a
/// `ForAllValues:StringLike` condition on `dynamodb:LeadingKeys` of exactly `keys`.
fn check_table_statement(
    t: &Template,
    what: &str,
    statement: &Value,
    actions: &[&str],
    keys: &[&str],
    arn: &Value,
) -> Result<(), String> {
    check_table_statement_with(t, what, statement, actions, &serde_json::json!(keys), arn)
}

/// [`check_table_statement`] with `keys` as the template writes them (strings or expressions).
fn check_table_statement_with(
    t: &Template,
    what: &str,
    statement: &Value,
    actions: &[&str],
    keys: &Value,
    arn: &Value,
) -> Result<(), String> {
    if statement["Effect"] != "Allow" {
        return Err(format!("the {what} statement is not an Allow: {statement}"));
    }
    let mut allowed = Vec::new();
    strings(&statement["Action"], &mut allowed);
    allowed.sort();
    if allowed != actions {
        return Err(format!("the {what} statement allows {allowed:?}, not {actions:?}"));
    }
    let resources = match &statement["Resource"] {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    };
    let resources: Vec<Value> = resources
        .into_iter()
        .map(|r| match r.get("Fn::Sub").and_then(Value::as_str) {
            Some(sub) => Value::from(t.substitute(sub)),
            None => r,
        })
        .collect();
    if resources != [arn.clone()] {
        return Err(format!(
            "the {what} statement's Resource {resources:?} is not just {arn}"
        ));
    }
    let condition = serde_json::json!({"ForAllValues:StringLike": {"dynamodb:LeadingKeys": keys}});
    if statement["Condition"] != condition {
        return Err(format!(
            "the {what} statement's condition {} is not {condition}",
            statement["Condition"]
        ));
    }
    Ok(())
}

/// The created coordination table: on-demand, KMS-encrypted, `pk` (S) as its only key, TTL on
/// `expires_at`.
fn check_table(name: &str, table: &Value) -> Result<(), String> {
    let props = &table["Properties"];
    if props["BillingMode"] != "PAY_PER_REQUEST" {
        return Err(format!(
            "table {name} is not on-demand (BillingMode {})",
            props["BillingMode"]
        ));
    }
    if props["SSESpecification"]["SSEEnabled"] != true {
        return Err(format!(
            "table {name} is not encrypted with KMS (SSESpecification.SSEEnabled)"
        ));
    }
    let key = serde_json::json!([{"AttributeName": "pk", "KeyType": "HASH"}]);
    if props["KeySchema"] != key {
        return Err(format!(
            "table {name} key schema {} is not pk HASH alone",
            props["KeySchema"]
        ));
    }
    let attributes = serde_json::json!([
        {"AttributeName": "pk", "AttributeType": "S"},
        {"AttributeName": "due", "AttributeType": "S"},
        {"AttributeName": "check_at", "AttributeType": "N"}
    ]);
    if props["AttributeDefinitions"] != attributes {
        return Err(format!(
            "table {name} attributes {} are not pk (S) and the due-index's keys",
            props["AttributeDefinitions"]
        ));
    }
    // The running executions cap's sparse index (only held slots carry `due`).
    let due_index = serde_json::json!([{
        "IndexName": "due-index",
        "KeySchema": [{"AttributeName": "due", "KeyType": "HASH"}, {"AttributeName": "check_at", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "ALL"}
    }]);
    if props["GlobalSecondaryIndexes"] != due_index {
        return Err(format!(
            "table {name} indexes {} are not the due-index (due S, check_at N, ALL) alone",
            props["GlobalSecondaryIndexes"]
        ));
    }
    let ttl = &props["TimeToLiveSpecification"];
    if ttl["AttributeName"] != "expires_at" || ttl["Enabled"] != true {
        return Err(format!("table {name} has no TTL on expires_at"));
    }
    if props.get("StreamSpecification").is_some() {
        return Err(format!("table {name} has a stream the function does not use"));
    }
    Ok(())
}

/// Coordinated mode as the `CoordinationTable` parameter asks: "Create" creates one table and
/// wires it, "None" creates and wires nothing, another value wires that existing table. The
/// role's budget statement allows exactly the three item actions on exactly that table's budget
/// items (`quota#*`); with batch executions on Standard a second statement allows exactly the
/// claims' actions on the claims and execution records (`claim#*`, `execution#*`), and without
/// them there is none. `QUOTA_KEY` is set exactly when coordinated and `QuotaKey` is not empty.
fn check_coordination(t: &Template) -> Result<(), String> {
    let mode = text(
        t.params
            .get("CoordinationTable")
            .ok_or("no CoordinationTable parameter")?,
    );
    let tables = t.deployed_of_type("AWS::DynamoDB::Table")?;
    let props = t.evaluate(&t.function()?["Properties"])?.unwrap_or_default();
    let variables = &props["Environment"]["Variables"];
    let (statements, _) = function_policies(t)?;
    let dynamo: Vec<&Value> = statements
        .iter()
        .filter(|s| {
            let mut actions = Vec::new();
            strings(&s["Action"], &mut actions);
            actions.iter().any(|a| a.to_lowercase().starts_with("dynamodb:"))
        })
        .collect();
    // The table the function is told, and the ARN the role must name.
    let (told, arn) = match mode.as_str() {
        "None" => {
            if let Some((name, _)) = tables.first() {
                return Err(format!("CoordinationTable=None still creates table {name}"));
            }
            for name in ["COORDINATION_TABLE", "QUOTA_KEY"] {
                if let Some(value) = variables.get(name) {
                    return Err(format!("CoordinationTable=None still sets {name} {value}"));
                }
            }
            if let Some(statement) = dynamo.first() {
                return Err(format!("CoordinationTable=None still allows DynamoDB: {statement}"));
            }
            return Ok(());
        }
        "Create" => {
            let [(name, table)] = tables.as_slice() else {
                return Err(format!(
                    "CoordinationTable=Create creates {} tables, not one",
                    tables.len()
                ));
            };
            check_table(name, table)?;
            (
                serde_json::json!({"Ref": name}),
                serde_json::json!({"Fn::GetAtt": [name, "Arn"]}),
            )
        }
        existing => {
            if let Some((name, _)) = tables.first() {
                return Err(format!("CoordinationTable={existing} also creates table {name}"));
            }
            (
                Value::from(existing),
                Value::from(format!(
                    "arn:${{AWS::Partition}}:dynamodb:${{AWS::Region}}:${{AWS::AccountId}}:table/{existing}"
                )),
            )
        }
    };
    let variable = variables
        .get("COORDINATION_TABLE")
        .ok_or_else(|| format!("CoordinationTable={mode} does not set COORDINATION_TABLE"))?;
    // A parameter's value is compared resolved; a resource's name stays a Ref.
    let resolved = if parameter_ref(t, variable).is_some() {
        t.resolve(variable)?
    } else {
        variable.clone()
    };
    if resolved != told {
        return Err(format!("COORDINATION_TABLE is {resolved}, expected {told}"));
    }
    // The budget's statement, and with per-message claims the claims' statement: each allows
    // exactly its actions on exactly this table, and only on items under its key prefixes.
    let mut expected = vec![("budget", COORDINATION_ACTIONS, BUDGET_KEYS)];
    if claims_expected(t)? {
        expected.push(("claims", CLAIM_ACTIONS, CLAIM_KEYS));
        expected.push(("started records", STARTED_RECORD_ACTIONS, STARTED_RECORD_KEYS));
    }
    if dynamo.len() != expected.len() {
        return Err(format!(
            "expected {} DynamoDB statement(s) ({:?}), found {}",
            expected.len(),
            expected.iter().map(|(what, _, _)| what).collect::<Vec<_>>(),
            dynamo.len()
        ));
    }
    for (what, actions, keys) in expected {
        let statement = dynamo
            .iter()
            .find(|s| leading_keys(s) == keys)
            .ok_or_else(|| format!("no DynamoDB statement for the {what}, on items {keys:?} only"))?;
        check_table_statement(t, what, statement, actions, keys, &arn)?;
    }
    let quota_key = text(t.params.get("QuotaKey").unwrap_or(&Value::from("")));
    match (variables.get("QUOTA_KEY"), quota_key.is_empty()) {
        (None, true) => {}
        (Some(v), false) if t.resolve(v)?.as_str() == Some(quota_key.as_str()) => {}
        (v, _) => return Err(format!("QUOTA_KEY is {v:?} with QuotaKey {quota_key:?}")),
    }
    Ok(())
}

/// Coordinated, an alarm on the function's `Fallbacks` (any in 5 minutes) notifies the topic.
fn check_fallbacks_alarm(t: &Template) -> Result<(), String> {
    let (function, _) = t.starter()?;
    let alarms = t.deployed_of_type("AWS::CloudWatch::Alarm")?;
    let on_fallbacks: Vec<_> = alarms
        .iter()
        .filter(|(_, a)| a["Properties"]["MetricName"] == "Fallbacks")
        .collect();
    let [(name, alarm)] = on_fallbacks.as_slice() else {
        return Err(format!("expected one alarm on Fallbacks, found {}", on_fallbacks.len()));
    };
    let props = &alarm["Properties"];
    if props["Namespace"] != serde_json::json!({"Ref": "MetricsNamespace"}) {
        return Err(format!("alarm {name} is not in the function's METRICS_NAMESPACE"));
    }
    let dimensions = serde_json::json!([{"Name": "FunctionName", "Value": {"Ref": function}}]);
    if props["Dimensions"] != dimensions {
        return Err(format!(
            "alarm {name} dimensions {} are not the function's",
            props["Dimensions"]
        ));
    }
    let threshold = t.number(&props["Threshold"])?;
    if props["Statistic"] != "Sum" || props["ComparisonOperator"] != "GreaterThanThreshold" || threshold != 0.0 {
        return Err(format!("alarm {name} does not fire on any fallback (Sum > 0)"));
    }
    if t.number(&props["Period"])? > 300.0 {
        return Err(format!("alarm {name} looks at more than 5 minutes"));
    }
    let mut description = Vec::new();
    strings(&props["AlarmDescription"], &mut description);
    let description = description.concat();
    if !description.contains("static split") {
        return Err(format!(
            "alarm {name} does not say the function falls back to the static split"
        ));
    }
    if !text(t.params.get("AlarmTopicArn").unwrap_or(&Value::Null)).is_empty() {
        let topic = serde_json::json!([{"Ref": "AlarmTopicArn"}]);
        if props["AlarmActions"] != topic || props["OKActions"] != topic {
            return Err(format!("alarm {name} does not notify AlarmTopicArn"));
        }
    }
    Ok(())
}

/// The dashboard's body is valid JSON once substituted, and graphs the function's `wanted`
/// metrics in its namespace.
fn check_dashboard_metrics(t: &Template, wanted: &[&str]) -> Result<(), String> {
    let (_, dashboard) = t.only("AWS::CloudWatch::Dashboard")?;
    let body = &dashboard["Properties"]["DashboardBody"];
    let template = match body.get("Fn::Sub") {
        Some(Value::Array(args)) => args.first().and_then(Value::as_str),
        Some(Value::String(s)) => Some(s.as_str()),
        _ => body.as_str(),
    }
    .ok_or("DashboardBody is not a string or Fn::Sub")?;
    // Parameters by value; the rest (pseudo-parameters, attributes, Sub variables) sit in strings.
    let mut text = t.substitute(template);
    while let Some(start) = text.find("${") {
        let end = text[start..].find('}').ok_or("unclosed ${ in the dashboard")? + start;
        text.replace_range(start..=end, "x");
    }
    let body: Value = serde_json::from_str(&text).map_err(|e| format!("the dashboard body is not JSON: {e}"))?;
    let namespace = t.resolve(&serde_json::json!({"Ref": "MetricsNamespace"}))?;
    let mut graphed = Vec::new();
    for widget in body["widgets"].as_array().ok_or("the dashboard has no widgets")? {
        // Rows use "." for "as the row above" and "..." for "the whole row above".
        let mut previous: Vec<Value> = Vec::new();
        for row in widget["properties"]["metrics"].as_array().into_iter().flatten() {
            let row = row.as_array().ok_or("a metrics row is not a list")?;
            let mut current: Vec<Value> = Vec::new();
            if row.first() == Some(&Value::from("...")) {
                current = previous.clone();
            } else {
                for (i, v) in row.iter().enumerate().filter(|(_, v)| !v.is_object()) {
                    current.push(if v == "." {
                        previous.get(i).cloned().unwrap_or_default()
                    } else {
                        v.clone()
                    });
                }
            }
            if current.len() >= 4 && current[0] == namespace && current[2] == "FunctionName" {
                graphed.extend(current[1].as_str().map(str::to_string));
            }
            previous = current;
        }
    }
    for metric in wanted {
        if !graphed.iter().any(|g| g == metric) {
            return Err(format!("the dashboard does not graph {metric} (graphs {graphed:?})"));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ FIFO, alarms, claim-check

/// The physical name a queue gets: its `QueueName` (a `Fn::Sub` with the parameters substituted),
/// or `None` when CloudFormation generates one.
fn queue_name(t: &Template, queue: &Value) -> Result<Option<String>, String> {
    let props = t.evaluate(&queue["Properties"])?.unwrap_or_default();
    match props.get("QueueName") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(t.substitute(s))),
        Some(v) => match v.get("Fn::Sub").and_then(Value::as_str) {
            Some(sub) => Ok(Some(t.substitute(sub))),
            None => Ok(Some(text(&t.resolve(v)?))),
        },
    }
}

/// Evaluates a rule assertion: `Fn::Contains` (a list of literals, a value) and the condition
/// functions.
fn asserts(t: &Template, expression: &Value) -> Result<bool, String> {
    if let Some(args) = expression.get("Fn::Contains") {
        let [list, value] = args.as_array().map(Vec::as_slice).unwrap_or_default() else {
            return Err("Fn::Contains takes two arguments".into());
        };
        let value = text(&t.resolve(value)?);
        let list = list.as_array().ok_or("Fn::Contains takes a list first")?;
        return Ok(list.iter().any(|v| text(v) == value));
    }
    t.holds(expression)
}

/// Whether the template's `Rules` accept its parameters; `Err` names the failing assertion.
fn check_rules(t: &Template) -> Result<(), String> {
    for (name, rule) in t.doc["Rules"].as_object().into_iter().flatten() {
        if let Some(condition) = rule.get("RuleCondition") {
            if !asserts(t, condition)? {
                continue;
            }
        }
        for assertion in rule["Assertions"].as_array().into_iter().flatten() {
            if !asserts(t, &assertion["Assert"])? {
                return Err(format!(
                    "rule {name} rejects the parameters: {}",
                    assertion["AssertDescription"]
                ));
            }
        }
    }
    Ok(())
}

/// `QueueType` as asked: FIFO makes both queues FIFO with `.fifo` names (content-based
/// deduplication on the work queue), the DLQ's RedriveAllowPolicy names the work queue, the
/// mapping has no batching window, and a BatchSize above 10 is rejected; Standard makes neither
/// queue FIFO.
fn check_queue_type(t: &Template) -> Result<(), String> {
    let fifo = text(t.params.get("QueueType").ok_or("no QueueType parameter")?) == "FIFO";
    let work = t.work_queue()?;
    let dlq_ref = &work["Properties"]["RedrivePolicy"]["deadLetterTargetArn"];
    let dlq_id = logical_id(dlq_ref).ok_or("the work queue's DLQ is not in this template")?;
    let dlq = &t.resources()[dlq_id];
    for (role, queue) in [("work queue", work), ("DLQ", dlq)] {
        let props = t.evaluate(&queue["Properties"])?.unwrap_or_default();
        let name = queue_name(t, queue)?;
        let is_fifo = props.get("FifoQueue").is_some_and(|f| text(f) == "true");
        if is_fifo != fifo {
            return Err(format!(
                "with QueueType {}, the {role} has FifoQueue {is_fifo}",
                t.params["QueueType"]
            ));
        }
        match (&name, fifo) {
            (Some(n), true) if n.ends_with(".fifo") => {}
            (n, true) => return Err(format!("the FIFO {role}'s name {n:?} does not end in .fifo")),
            (Some(n), false) if n.ends_with(".fifo") => return Err(format!("the Standard {role} is named {n}")),
            (_, false) => {}
        }
    }
    let work_props = t.evaluate(&work["Properties"])?.unwrap_or_default();
    let deduplication = work_props.get("ContentBasedDeduplication").map(text);
    if fifo && deduplication.as_deref() != Some("true") {
        return Err("the FIFO work queue has no content-based deduplication".into());
    }
    if !fifo && deduplication.is_some() {
        return Err("the Standard work queue sets ContentBasedDeduplication".into());
    }
    // The DLQ lets exactly the work queue redrive into it.
    let work_name = queue_name(t, work)?.ok_or("the work queue has no name for the DLQ to name")?;
    let dlq_props = t.evaluate(&dlq["Properties"])?.unwrap_or_default();
    let sources: Vec<String> = dlq_props["RedriveAllowPolicy"]["sourceQueueArns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| t.substitute(a.get("Fn::Sub").and_then(Value::as_str).unwrap_or(&text(a))))
        .collect();
    let [source] = sources.as_slice() else {
        return Err(format!("the DLQ's RedriveAllowPolicy names {sources:?}, not one queue"));
    };
    if !source.ends_with(&format!(":{work_name}")) || !source.starts_with("arn:") {
        return Err(format!(
            "the DLQ allows redrive from {source}, not from the work queue {work_name}"
        ));
    }
    // The mapping: no batching window with FIFO, and at most 10 messages per batch.
    let event = t.evaluate(t.sqs_event()?)?.unwrap_or_default();
    if fifo && event.get("MaximumBatchingWindowInSeconds").is_some() {
        return Err("the FIFO mapping sets MaximumBatchingWindowInSeconds".into());
    }
    if !fifo && event.get("MaximumBatchingWindowInSeconds").is_none() {
        return Err("the Standard mapping lost MaximumBatchingWindowInSeconds".into());
    }
    let batch = &event["BatchSize"];
    let mut sizes: Vec<Value> = match parameter_ref(t, batch) {
        Some(p) => t.candidates(p),
        None => vec![batch.clone()],
    };
    sizes.extend([Value::from(10), Value::from(11)]);
    for size in sizes {
        let mut varied = Template {
            doc: t.doc.clone(),
            params: t.params.clone(),
        };
        if let Some(p) = parameter_ref(t, batch) {
            varied.params.insert(p.to_string(), size.clone());
        }
        let n = varied.number(batch)?;
        match (check_rules(&varied), fifo && n > 10.0) {
            (Ok(()), true) => return Err(format!("BatchSize {n} with a FIFO queue passes the Rules")),
            (Err(e), false) => return Err(format!("BatchSize {n}: {e}")),
            _ => {}
        }
    }
    Ok(())
}

/// The alarm on the DLQ fires on new arrivals: metric math with DIFF or RATE over the DLQ's
/// ApproximateNumberOfMessagesVisible (Maximum, 60 s), above 0, not on the depth itself.
fn check_dlq_alarm(t: &Template) -> Result<(), String> {
    let dlq_ref = &t.work_queue()?["Properties"]["RedrivePolicy"]["deadLetterTargetArn"];
    let dlq = logical_id(dlq_ref).ok_or("the work queue's DLQ is not in this template")?;
    let dlq_name = serde_json::json!({"Fn::GetAtt": [dlq, "QueueName"]});
    let on_dlq = |metric: &Value| {
        metric["Namespace"] == "AWS/SQS"
            && metric["Dimensions"]
                .as_array()
                .is_some_and(|d| d.iter().any(|d| d["Name"] == "QueueName" && d["Value"] == dlq_name))
    };
    let alarms = t.deployed_of_type("AWS::CloudWatch::Alarm")?;
    let mut found = Vec::new();
    for (name, alarm) in &alarms {
        let metrics = alarm_metrics(alarm);
        if !metrics.iter().any(on_dlq) {
            continue;
        }
        let props = &alarm["Properties"];
        if props.get("MetricName").is_some() {
            return Err(format!("alarm {name} alarms on the DLQ's depth, not on arrivals"));
        }
        let visible = metrics
            .iter()
            .find(|m| on_dlq(m) && m["MetricName"] == "ApproximateNumberOfMessagesVisible")
            .ok_or_else(|| format!("alarm {name} does not read the DLQ's ApproximateNumberOfMessagesVisible"))?;
        let stat = props["Metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["Id"] == visible["Id"])
            .map(|m| &m["MetricStat"])
            .ok_or("no MetricStat")?;
        if stat["Stat"] != "Maximum" || t.number(&stat["Period"])? != 60.0 {
            return Err(format!(
                "alarm {name} reads the DLQ's depth as {} over {}",
                stat["Stat"], stat["Period"]
            ));
        }
        let returned = returned_series(props);
        let [result] = returned.as_slice() else {
            return Err(format!(
                "alarm {name} returns {} series, not one expression",
                returned.len()
            ));
        };
        let expression = result["Expression"].as_str().unwrap_or_default();
        let id = visible["Id"].as_str().unwrap_or_default();
        let grows = ["DIFF(", "RATE("].iter().any(|f| expression.contains(f));
        if !grows || id.is_empty() || !expression.contains(id) {
            return Err(format!(
                "alarm {name} expression {expression:?} is not DIFF/RATE of {id}"
            ));
        }
        let threshold = t.number(&props["Threshold"])?;
        if props["ComparisonOperator"] != "GreaterThanThreshold" || threshold != 0.0 {
            return Err(format!("alarm {name} does not fire on any arrival (> 0)"));
        }
        let mut description = Vec::new();
        strings(&props["AlarmDescription"], &mut description);
        if !description.concat().contains("start-message-move-task") {
            return Err(format!("alarm {name} does not say how to redrive"));
        }
        check_notifies(t, name, props)?;
        found.push(name.clone());
    }
    match found.len() {
        1 => Ok(()),
        n => Err(format!("expected one alarm on DLQ arrivals, found {n}")),
    }
}

/// The series a metric-math alarm returns (its `Metrics` with `ReturnData` true or unset).
fn returned_series(props: &Value) -> Vec<&Value> {
    props["Metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m.get("ReturnData").is_none_or(|r| r == true))
        .collect()
}

/// With an AlarmTopicArn, the alarm notifies it on ALARM and OK.
fn check_notifies(t: &Template, name: &str, props: &Value) -> Result<(), String> {
    if !text(t.params.get("AlarmTopicArn").unwrap_or(&Value::Null)).is_empty() {
        let topic = serde_json::json!([{"Ref": "AlarmTopicArn"}]);
        if props["AlarmActions"] != topic || props["OKActions"] != topic {
            return Err(format!("alarm {name} does not notify AlarmTopicArn"));
        }
    }
    Ok(())
}

/// An alarm on the account's throttled StartExecution calls (AWS/States ThrottledEvents,
/// APIName=StartExecution, all callers) that says what to do, next to the function's own.
fn check_account_throttle_alarm(t: &Template) -> Result<(), String> {
    let alarms = t.deployed_of_type("AWS::CloudWatch::Alarm")?;
    let account: Vec<_> = alarms
        .iter()
        .filter(|(_, a)| {
            let p = &a["Properties"];
            p["Namespace"] == "AWS/States" && p["MetricName"] == "ThrottledEvents"
        })
        .collect();
    let [(name, alarm)] = account.as_slice() else {
        return Err(format!(
            "expected one alarm on AWS/States ThrottledEvents, found {}",
            account.len()
        ));
    };
    let props = &alarm["Properties"];
    let dimensions = serde_json::json!([{"Name": "APIName", "Value": "StartExecution"}]);
    if props["Dimensions"] != dimensions {
        return Err(format!(
            "alarm {name} dimensions {} are not APIName=StartExecution",
            props["Dimensions"]
        ));
    }
    let threshold = t.number(&props["Threshold"])?;
    if props["Statistic"] != "Sum" || props["ComparisonOperator"] != "GreaterThanThreshold" || threshold != 0.0 {
        return Err(format!("alarm {name} does not fire on throttled calls (Sum > 0)"));
    }
    let mut description = Vec::new();
    strings(&props["AlarmDescription"], &mut description);
    let description = description.concat();
    for needed in ["StartsPerSecond", "sfn-pacer-quota set", "other caller"] {
        if !description.contains(needed) {
            return Err(format!("alarm {name} does not mention {needed:?}"));
        }
    }
    check_notifies(t, name, props)?;
    let own = alarms.iter().any(|(_, a)| {
        a["Properties"]["MetricName"] == "Throttled"
            && a["Properties"]["Namespace"] == serde_json::json!({"Ref": "MetricsNamespace"})
    });
    if !own {
        return Err("the alarm on the function's own Throttled metric is gone".into());
    }
    Ok(())
}

/// The created claim-check bucket: encrypted, public access blocked, objects under sfn-pacer/
/// expiring after ClaimCheckRetentionDays, and a bucket policy that denies requests without TLS.
fn check_bucket(t: &Template, name: &str, bucket: &Value) -> Result<(), String> {
    let props = &bucket["Properties"];
    let sse = &props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"];
    if !["AES256", "aws:kms", "aws:kms:dsse"].contains(&text(&sse["SSEAlgorithm"]).as_str()) {
        return Err(format!("bucket {name} has no default encryption"));
    }
    let block = &props["PublicAccessBlockConfiguration"];
    for key in [
        "BlockPublicAcls",
        "BlockPublicPolicy",
        "IgnorePublicAcls",
        "RestrictPublicBuckets",
    ] {
        if text(&block[key]) != "true" {
            return Err(format!("bucket {name} does not set {key}"));
        }
    }
    let retention = serde_json::json!({"Ref": "ClaimCheckRetentionDays"});
    let expires = props["LifecycleConfiguration"]["Rules"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| {
            let prefix = r.get("Prefix").unwrap_or(&r["Filter"]["Prefix"]);
            r["Status"] == "Enabled" && prefix == "sfn-pacer/" && r["ExpirationInDays"] == retention
        });
    if !expires {
        return Err(format!(
            "bucket {name} has no rule expiring sfn-pacer/ after ClaimCheckRetentionDays"
        ));
    }
    let days = &t.doc["Parameters"]["ClaimCheckRetentionDays"];
    if days["MinValue"].as_f64().is_none_or(|m| m < 1.0) {
        return Err("ClaimCheckRetentionDays allows less than a day".into());
    }
    let policies = t.deployed_of_type("AWS::S3::BucketPolicy")?;
    let tls = policies.iter().any(|(_, p)| {
        let p = &p["Properties"];
        p["Bucket"] == serde_json::json!({"Ref": name})
            && p["PolicyDocument"]["Statement"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| {
                    s["Effect"] == "Deny"
                        && s["Principal"] == "*"
                        && text(&s["Condition"]["Bool"]["aws:SecureTransport"]) == "false"
                })
    });
    if !tls {
        return Err(format!("bucket {name} has no policy denying requests without TLS"));
    }
    Ok(())
}

/// The S3 statements of a list of policy statements.
fn s3_statements(statements: &[Value]) -> Vec<&Value> {
    statements
        .iter()
        .filter(|s| {
            let mut actions = Vec::new();
            strings(&s["Action"], &mut actions);
            actions.iter().any(|a| a.to_lowercase().starts_with("s3:"))
        })
        .collect()
}

/// The single S3 statement allows exactly `action` on exactly `arn` (after substitution).
fn check_s3_statement(t: &Template, who: &str, statements: &[&Value], action: &str, arn: &str) -> Result<(), String> {
    let [statement] = statements else {
        return Err(format!("{who}: expected one S3 statement, found {}", statements.len()));
    };
    let mut actions = Vec::new();
    strings(&statement["Action"], &mut actions);
    if statement["Effect"] != "Allow" || actions != [action] {
        return Err(format!("{who}: the S3 statement allows {actions:?}, not just {action}"));
    }
    let resources: Vec<String> = match &statement["Resource"] {
        Value::Array(items) => items.clone(),
        one => vec![one.clone()],
    }
    .iter()
    .map(|r| t.substitute(r.get("Fn::Sub").and_then(Value::as_str).unwrap_or(&text(r))))
    .collect();
    if resources != [arn] {
        return Err(format!(
            "{who}: the S3 statement's Resource {resources:?} is not just {arn}"
        ));
    }
    Ok(())
}

/// Claim-check as the `ClaimCheckBucket` parameter asks: "Create" creates one bucket and wires
/// it, "None" creates and wires nothing, another value wires that existing bucket. The function
/// may only s3:PutObject under sfn-pacer/, the sample state machine only s3:GetObject under
/// sfn-pacer/inputs/.
fn check_claim_check(t: &Template) -> Result<(), String> {
    let mode = text(
        t.params
            .get("ClaimCheckBucket")
            .ok_or("no ClaimCheckBucket parameter")?,
    );
    let buckets = t.deployed_of_type("AWS::S3::Bucket")?;
    let props = t.evaluate(&t.function()?["Properties"])?.unwrap_or_default();
    let variable = props["Environment"]["Variables"].get("CLAIM_CHECK_BUCKET");
    let (statements, _) = function_policies(t)?;
    let s3 = s3_statements(&statements);
    let machine = t
        .deployed_of_type("AWS::Serverless::StateMachine")?
        .into_iter()
        .next()
        .map(|(_, m)| m);
    let mut machine_statements = Vec::new();
    for policy in machine
        .iter()
        .flat_map(|m| m["Properties"]["Policies"].as_array().cloned().unwrap_or_default())
    {
        machine_statements.extend(policy["Statement"].as_array().cloned().unwrap_or_default());
    }
    let machine_s3 = s3_statements(&machine_statements);
    let output = t.doc["Outputs"]
        .as_object()
        .into_iter()
        .flatten()
        .find(|(_, o)| o["Value"].to_string().contains("ClaimCheck"));
    let (bucket, arn) = match mode.as_str() {
        "None" => {
            if let Some((name, _)) = buckets.first() {
                return Err(format!("ClaimCheckBucket=None still creates bucket {name}"));
            }
            if let Some(v) = variable {
                return Err(format!("ClaimCheckBucket=None still sets CLAIM_CHECK_BUCKET {v}"));
            }
            if let Some(statement) = s3.first().or(machine_s3.first()) {
                return Err(format!("ClaimCheckBucket=None still allows S3: {statement}"));
            }
            if let Some((name, o)) = output {
                let shown = match o.get("Condition").and_then(Value::as_str) {
                    Some(c) => t.condition(c)?,
                    None => true,
                };
                if shown {
                    return Err(format!("ClaimCheckBucket=None still outputs {name}"));
                }
            }
            return Ok(());
        }
        "Create" => {
            let [(name, bucket)] = buckets.as_slice() else {
                return Err(format!(
                    "ClaimCheckBucket=Create creates {} buckets, not one",
                    buckets.len()
                ));
            };
            check_bucket(t, name, bucket)?;
            (serde_json::json!({"Ref": name}), format!("${{{name}.Arn}}"))
        }
        existing => {
            if let Some((name, _)) = buckets.first() {
                return Err(format!("ClaimCheckBucket={existing} also creates bucket {name}"));
            }
            (
                Value::from(existing),
                format!("arn:${{AWS::Partition}}:s3:::{existing}"),
            )
        }
    };
    let variable = variable.ok_or_else(|| format!("ClaimCheckBucket={mode} does not set CLAIM_CHECK_BUCKET"))?;
    let told = if parameter_ref(t, variable).is_some() {
        t.resolve(variable)?
    } else {
        variable.clone()
    };
    if told != bucket {
        return Err(format!("CLAIM_CHECK_BUCKET is {told}, expected {bucket}"));
    }
    check_s3_statement(
        t,
        "the function's role",
        &s3,
        "s3:PutObject",
        &format!("{arn}/sfn-pacer/*"),
    )?;
    if machine.is_some() {
        let inputs = format!("{arn}/sfn-pacer/inputs/*");
        check_s3_statement(
            t,
            "the sample state machine's role",
            &machine_s3,
            "s3:GetObject",
            &inputs,
        )?;
    }
    if output.is_none() {
        return Err("no output names the claim-check bucket".into());
    }
    Ok(())
}

// ------------------------------------------------------------------ batch executions

/// The sample definitions, in infra/.
const SINGLE_DEFINITION: &str = "infra/state-machine.asl.json";
const BATCH_DEFINITION: &str = "infra/state-machine-batch.asl.json";

/// The Step Functions definition at `uri`, relative to the workspace.
fn read_definition(uri: &str) -> Result<Value, String> {
    let path = workspace_root().join(uri);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{uri} is not JSON: {e}"))
}

/// A states graph (a definition, or a Map's ItemProcessor): `StartAt` names a state, every
/// `Next` names a state, every state has a `Next` or ends (End, Succeed, Fail, Choice), and
/// every state is reachable from `StartAt` (Step Functions rejects an unreachable one).
fn check_states_graph(graph: &Value) -> Result<(), String> {
    let states = graph["States"].as_object().ok_or("no States")?;
    let start = graph["StartAt"].as_str().ok_or("no StartAt")?;
    if !states.contains_key(start) {
        return Err(format!("StartAt {start} is not a state"));
    }
    let targets = |state: &Value| -> Vec<String> {
        let mut out: Vec<String> = state["Next"].as_str().map(str::to_string).into_iter().collect();
        for choice in state["Choices"].as_array().into_iter().flatten() {
            out.extend(choice["Next"].as_str().map(str::to_string));
        }
        out.extend(state["Default"].as_str().map(str::to_string));
        out
    };
    for (name, state) in states {
        let kind = state["Type"].as_str().unwrap_or_default();
        let ends = state["End"] == true || ["Succeed", "Fail", "Choice"].contains(&kind);
        if targets(state).is_empty() && !ends {
            return Err(format!("state {name} neither goes on nor ends"));
        }
        if let Some(next) = targets(state).iter().find(|n| !states.contains_key(n.as_str())) {
            return Err(format!("state {name} goes on to {next}, which is not a state"));
        }
    }
    let mut reached = vec![start.to_string()];
    let mut i = 0;
    while i < reached.len() {
        for next in targets(&states[&reached[i]]) {
            if !reached.contains(&next) {
                reached.push(next);
            }
        }
        i += 1;
    }
    if let Some(name) = states.keys().find(|n| !reached.contains(n)) {
        return Err(format!("state {name} cannot be reached from {start}"));
    }
    Ok(())
}

/// What a Pass state records: the values of its `Parameters` (paths such as `$` or
/// `$$.Execution.Name`), whatever the keys, sorted.
fn recorded(pass: &Value) -> Vec<String> {
    let mut values: Vec<String> = pass["Parameters"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(_, v)| v.as_str().map(str::to_string))
        .collect();
    values.sort();
    values
}

/// The batch sample: a valid graph whose first state is a Map over `$.items` with a bounded
/// `MaxConcurrency` (0 or none is unbounded); each item runs a valid graph with a Pass that
/// records what the single sample's Pass records (here the item, the name, the start time).
fn check_batch_definition(batch: &Value, single: &Value) -> Result<(), String> {
    check_states_graph(batch)?;
    let start = batch["StartAt"].as_str().unwrap_or_default();
    let map = &batch["States"][start];
    if map["Type"] != "Map" {
        return Err(format!("the first state {start} is not a Map"));
    }
    if map["ItemsPath"] != "$.items" {
        return Err(format!("the Map reads {}, not $.items", map["ItemsPath"]));
    }
    // An inline Map runs up to 40 iterations at once: a bound above that bounds nothing.
    match map["MaxConcurrency"].as_u64() {
        Some(n) if (1..=40).contains(&n) => {}
        other => return Err(format!("the Map's MaxConcurrency {other:?} is not within 1..=40")),
    }
    let processor = map
        .get("ItemProcessor")
        .or(map.get("Iterator"))
        .ok_or("the Map has no ItemProcessor")?;
    check_states_graph(processor).map_err(|e| format!("the Map's ItemProcessor: {e}"))?;
    let wanted: Vec<&Value> = single["States"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, s)| s)
        .filter(|s| s["Type"] == "Pass")
        .collect();
    let [single_pass] = wanted.as_slice() else {
        return Err("the single sample has no single Pass state to compare with".into());
    };
    let records = recorded(single_pass);
    let per_item = processor["States"]
        .as_object()
        .into_iter()
        .flatten()
        .any(|(_, s)| s["Type"] == "Pass" && recorded(s) == records);
    if !per_item {
        return Err(format!("no Pass state of the Map records {records:?} per item"));
    }
    Ok(())
}

/// The `MessagesPerExecution` parameter: a Number, 1 (one execution per message) by default, 1
/// to 99 (a transaction holds 99 claims and the record), in a parameter group, described with
/// its variable and the table it needs; the function gets it as `MESSAGES_PER_EXECUTION`; the
/// Rules accept the whole numbers 1 to 99 only.
fn check_messages_per_execution(t: &Template) -> Result<(), String> {
    let p = &t.doc["Parameters"]["MessagesPerExecution"];
    if p["Type"] != "Number" {
        return Err(format!("MessagesPerExecution is {}, not a Number", p["Type"]));
    }
    for (key, wanted) in [("Default", 1.0), ("MinValue", 1.0), ("MaxValue", 99.0)] {
        if p[key].as_f64() != Some(wanted) {
            return Err(format!("MessagesPerExecution {key} is {}, not {wanted}", p[key]));
        }
    }
    let description = text(&p["Description"]);
    for needed in [
        "MESSAGES_PER_EXECUTION",
        "CoordinationTable",
        "STANDARD",
        "EXPRESS",
        "{\"items\"",
    ] {
        if !description.contains(needed) {
            return Err(format!("MessagesPerExecution's description does not mention {needed}"));
        }
    }
    let grouped = t.doc["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|g| {
            g["Parameters"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p == "MessagesPerExecution"))
        });
    if !grouped {
        return Err("MessagesPerExecution is in no parameter group".into());
    }
    let variable = &t.function()?["Properties"]["Environment"]["Variables"]["MESSAGES_PER_EXECUTION"];
    if *variable != serde_json::json!({"Ref": "MessagesPerExecution"}) {
        return Err(format!("MESSAGES_PER_EXECUTION is {variable}, not the parameter"));
    }
    let with = |n: Value| {
        Template {
            doc: t.doc.clone(),
            params: t.params.clone(),
        }
        .with("MessagesPerExecution", n)
    };
    for n in 1..=99 {
        check_rules(&with(n.into())).map_err(|e| format!("MessagesPerExecution {n}: {e}"))?;
    }
    // A Number parameter takes these; the function would fail at init on each.
    for n in ["2.5", "1.0", "05", "100", "0"] {
        if check_rules(&with(n.into())).is_ok() {
            return Err(format!("MessagesPerExecution {n} passes the Rules"));
        }
    }
    Ok(())
}

/// Batches of a Standard workflow claim each message in the coordination table under its name:
/// the Rules reject MessagesPerExecution above 1 with WorkflowType STANDARD and CoordinationTable
/// None or ExecutionName none (the function would fail at init), and only those.
fn check_batch_rule(t: &Template) -> Result<(), String> {
    let with = |n: i64, workflow: &str, table: &str, name: &str| {
        Template {
            doc: t.doc.clone(),
            params: t.params.clone(),
        }
        .with("MessagesPerExecution", n.into())
        .with("WorkflowType", workflow.into())
        .with("CoordinationTable", table.into())
        .with("ExecutionName", name.into())
    };
    for (n, workflow, table, name, accepted) in [
        (1, "STANDARD", "None", "none", true),
        (1, "EXPRESS", "None", "message-id", true),
        (2, "STANDARD", "Create", "message-id", true),
        (99, "STANDARD", "shared-budget", "attribute:OrderId", true),
        (2, "EXPRESS", "None", "none", true),
        (99, "EXPRESS", "Create", "message-id", true),
        (2, "STANDARD", "None", "message-id", false),
        (99, "STANDARD", "None", "message-id", false),
        (2, "STANDARD", "Create", "none", false),
    ] {
        let mode =
            format!("MessagesPerExecution {n} on {workflow} with CoordinationTable {table}, ExecutionName {name}");
        match (check_rules(&with(n, workflow, table, name)), accepted) {
            (Ok(()), false) => return Err(format!("{mode} passes the Rules")),
            (Err(e), true) => return Err(format!("{mode}: {e}")),
            _ => {}
        }
    }
    Ok(())
}

/// The sample state machine as the parameters ask: none with a StateMachineArn; else exactly
/// one, with the batch definition when MessagesPerExecution > 1 and the single one otherwise.
/// Every place that names the state machine names that one (or the StateMachineArn parameter):
/// the function's STATE_MACHINE_ARN, its StartExecution statement, the ExecutionThrottled alarm,
/// the dashboard and the StateMachineArn output.
fn check_state_machine_selection(t: &Template) -> Result<(), String> {
    let machines = t.deployed_of_type("AWS::Serverless::StateMachine")?;
    let batching = t.number(t.params.get("MessagesPerExecution").ok_or("no MessagesPerExecution")?)? > 1.0;
    let own = text(t.params.get("StateMachineArn").ok_or("no StateMachineArn parameter")?);
    let expected = if own.is_empty() {
        let [(name, machine)] = machines.as_slice() else {
            return Err(format!("{} sample state machines are created, not one", machines.len()));
        };
        let uri = text(&machine["Properties"]["DefinitionUri"]);
        let wanted = if batching { BATCH_DEFINITION } else { SINGLE_DEFINITION };
        if uri != wanted {
            return Err(format!("the sample state machine {name} is {uri}, not {wanted}"));
        }
        serde_json::json!({"Ref": name})
    } else {
        if let Some((name, _)) = machines.first() {
            return Err(format!("StateMachineArn is given and {name} is still created"));
        }
        serde_json::json!({"Ref": "StateMachineArn"})
    };
    let function = t.evaluate(&t.function()?["Properties"])?.unwrap_or_default();
    let (statements, _) = function_policies(t)?;
    let starts = statements
        .iter()
        .find(|s| s["Action"] == "states:StartExecution")
        .map(|s| s["Resource"].clone());
    let throttled = t
        .deployed_of_type("AWS::CloudWatch::Alarm")?
        .into_iter()
        .find(|(_, a)| a["Properties"]["MetricName"] == "ExecutionThrottled")
        .and_then(|(_, a)| {
            a["Properties"]["Dimensions"]
                .as_array()?
                .iter()
                .find(|d| d["Name"] == "StateMachineArn")
                .map(|d| d["Value"].clone())
        });
    let (_, dashboard) = t.only("AWS::CloudWatch::Dashboard")?;
    let dashboard = t.evaluate(&dashboard["Properties"]["DashboardBody"]["Fn::Sub"][1]["StateMachine"])?;
    let output = t.evaluate(&t.doc["Outputs"]["StateMachineArn"]["Value"])?;
    for (place, value) in [
        (
            "STATE_MACHINE_ARN",
            function["Environment"]["Variables"].get("STATE_MACHINE_ARN").cloned(),
        ),
        ("the StartExecution statement", starts),
        ("the ExecutionThrottled alarm", throttled),
        ("the dashboard's StateMachine", dashboard),
        ("the StateMachineArn output", output),
    ] {
        if value.as_ref() != Some(&expected) {
            return Err(format!("{place} is {value:?}, not {expected}"));
        }
    }
    Ok(())
}

/// The two sample state machines differ only in their definition and condition, so that the
/// batch variant gets every fix the single one gets (logging, tracing, claim-check reads).
fn check_sample_machines_alike(t: &Template) -> Result<(), String> {
    let machines = t.resources_of_type("AWS::Serverless::StateMachine");
    let [(a, first), (b, second)] = machines.as_slice() else {
        return Err(format!("expected two sample state machines, found {}", machines.len()));
    };
    let without_definition = |m: &Value| {
        let mut props = m["Properties"].clone();
        props.as_object_mut().map(|p| p.remove("DefinitionUri"));
        props
    };
    if without_definition(first) != without_definition(second) {
        return Err(format!("{a} and {b} differ in more than DefinitionUri"));
    }
    let mut uris = [
        text(&first["Properties"]["DefinitionUri"]),
        text(&second["Properties"]["DefinitionUri"]),
    ];
    uris.sort();
    if uris != [BATCH_DEFINITION, SINGLE_DEFINITION] {
        return Err(format!("the sample definitions are {uris:?}"));
    }
    Ok(())
}

/// The `${Name}` and `${Name.Attribute}` variables of a `Fn::Sub` string (`${!Literal}` is none).
fn sub_variables(template: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        if !after.starts_with('!') {
            out.push(after[..end].to_string());
        }
        rest = &after[end + 1..];
    }
    out
}

/// Every `Ref`, `Fn::GetAtt` and `Fn::Sub` variable in `value` that names neither a parameter, a
/// pseudo-parameter, a `Fn::Sub` variable of its own nor one of `resources`.
fn dangling(t: &Template, value: &Value, resources: &[String], out: &mut Vec<String>) {
    let known = |name: &str| {
        let name = name.split('.').next().unwrap_or(name);
        name.starts_with("AWS::") || t.doc["Parameters"].get(name).is_some() || resources.iter().any(|r| r == name)
    };
    match value {
        Value::Object(o) if o.len() == 1 && o.contains_key("Ref") => {
            let name = text(&o["Ref"]);
            if !known(&name) {
                out.push(name);
            }
        }
        Value::Object(o) if o.len() == 1 && o.contains_key("Fn::GetAtt") => {
            let name = text(&o["Fn::GetAtt"][0]);
            if !known(&name) {
                out.push(name);
            }
        }
        Value::Object(o) if o.len() == 1 && o.contains_key("Fn::Sub") => {
            let (template, variables) = match &o["Fn::Sub"] {
                Value::Array(args) => (text(&args[0]), args.get(1).cloned().unwrap_or_default()),
                other => (text(other), Value::Null),
            };
            for name in sub_variables(&template) {
                if variables.get(&name).is_none() && !known(&name) {
                    out.push(name);
                }
            }
            dangling(t, &variables, resources, out);
        }
        Value::Object(o) => o.values().for_each(|v| dangling(t, v, resources, out)),
        Value::Array(items) => items.iter().for_each(|v| dangling(t, v, resources, out)),
        _ => {}
    }
}

/// No deployed resource and no shown output names a resource that is not created with these
/// parameters (CloudFormation would reject the stack).
fn check_references(t: &Template) -> Result<(), String> {
    let deployed = t.deployed()?;
    let mut names: Vec<String> = deployed.iter().map(|(n, _)| n.clone()).collect();
    // SAM names the resources of a function's event `<Function><Event>` (a rule, a schedule).
    for (name, resource) in &deployed {
        for event in resource["Properties"]["Events"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(e, _)| e)
        {
            names.push(format!("{name}{event}"));
        }
    }
    let mut found = Vec::new();
    for (name, resource) in &deployed {
        let mut missing = Vec::new();
        dangling(t, &resource["Properties"], &names, &mut missing);
        found.extend(missing.into_iter().map(|m| format!("{name} -> {m}")));
    }
    for (name, output) in t.doc["Outputs"].as_object().into_iter().flatten() {
        if let Some(condition) = output.get("Condition").and_then(Value::as_str) {
            if !t.condition(condition)? {
                continue;
            }
        }
        let mut missing = Vec::new();
        dangling(t, &t.evaluate(output)?.unwrap_or_default(), &names, &mut missing);
        found.extend(missing.into_iter().map(|m| format!("output {name} -> {m}")));
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!("references to resources not created: {found:?}"))
    }
}

// ------------------------------------------------------------------------------------------ tests

/// The names `sfn_pacer::config` reads.
fn known_variables() -> &'static [&'static str] {
    sfn_pacer::config::VARIABLES
}

#[test]
fn visibility_timeout_covers_six_function_timeouts_plus_window() {
    check_visibility(&Template::load()).unwrap();
}

#[test]
fn reserved_concurrency_covers_maximum_concurrency() {
    check_concurrency(&Template::load()).unwrap();
}

/// Provisioned mode with pollers the reserved concurrency can serve (10 invokes per poller).
fn provisioned() -> Template {
    Template::load()
        .with("ProvisionedPollers", 3.into())
        .with("MaximumPollers", 20.into())
        .with("MaxConcurrency", 200.into())
}

#[test]
fn scaling_is_on_demand_by_default_and_provisioned_when_asked() {
    let on_demand = Template::load();
    assert_eq!(text(&on_demand.params["ProvisionedPollers"]), "0");
    let event = on_demand.evaluate(on_demand.sqs_event().unwrap()).unwrap().unwrap();
    assert_eq!(
        event["ScalingConfig"],
        serde_json::json!({"MaximumConcurrency": {"Ref": "MaxConcurrency"}})
    );
    assert!(event.get("ProvisionedPollerConfig").is_none());

    let t = provisioned();
    check_concurrency(&t).unwrap();
    check_rules(&t).unwrap();
    let event = t.evaluate(t.sqs_event().unwrap()).unwrap().unwrap();
    assert!(event.get("ScalingConfig").is_none(), "{event}");
    let config = &event["ProvisionedPollerConfig"];
    assert_eq!(t.number(&config["MinimumPollers"]).unwrap(), 3.0);
    assert_eq!(t.number(&config["MaximumPollers"]).unwrap(), 20.0);
    // Everything else holds in provisioned mode, for both queue types and coordinated modes.
    for t in [
        provisioned(),
        provisioned().with("QueueType", "FIFO".into()),
        provisioned().with("CoordinationTable", "shared-budget".into()),
    ] {
        check_concurrency(&t).unwrap();
        check_rules(&t).unwrap();
        check_visibility(&t).unwrap();
        check_queue_type(&t).unwrap();
        check_batch_item_failures(&t).unwrap();
        check_coordination(&t).unwrap();
        check_least_privilege(&t).unwrap();
    }
    // The largest allowed MaximumPollers with the largest MaxConcurrency.
    check_concurrency(
        &provisioned()
            .with("ProvisionedPollers", 100.into())
            .with("MaximumPollers", 100.into())
            .with("MaxConcurrency", 1000.into()),
    )
    .unwrap();
}

#[test]
fn provisioned_mode_needs_coordination_and_at_least_two_pollers() {
    check_provisioned_mode(&Template::load()).unwrap();
}

#[test]
fn max_receive_count_is_at_least_five() {
    check_max_receive_count(&Template::load()).unwrap();
}

#[test]
fn event_reports_batch_item_failures() {
    check_batch_item_failures(&Template::load()).unwrap();
}

#[test]
fn function_role_has_no_wildcards() {
    check_least_privilege(&Template::load()).unwrap();
}

#[test]
fn environment_names_are_read_by_the_function() {
    check_environment(&Template::load(), known_variables()).unwrap();
}

#[test]
fn budget_defaults_are_safe_in_every_region() {
    check_budget_defaults(&Template::load()).unwrap();
}

#[test]
fn queues_are_encrypted_and_the_dlq_keeps_messages_14_days() {
    check_queues(&Template::load()).unwrap();
}

#[test]
fn alarms_cover_the_failure_modes_and_say_what_to_do() {
    check_alarms(&Template::load()).unwrap();
}

#[test]
fn sample_state_machine_definitions_are_valid_graphs() {
    for n in [1, 10] {
        let t = Template::load().with("MessagesPerExecution", n.into());
        let machines = t.deployed_of_type("AWS::Serverless::StateMachine").unwrap();
        let [(name, machine)] = machines.as_slice() else {
            panic!(
                "with MessagesPerExecution {n}: {} sample state machines",
                machines.len()
            );
        };
        let uri = machine["Properties"]["DefinitionUri"]
            .as_str()
            .expect("DefinitionUri is a local path");
        let definition = read_definition(uri).unwrap();
        check_states_graph(&definition).unwrap_or_else(|e| panic!("{name} ({uri}): {e}"));
    }
}

/// The `CoordinationTable` modes: create (default), off, an existing table, with a `QuotaKey`.
fn coordination_modes() -> Vec<Template> {
    vec![
        Template::load(),
        Template::load().with("CoordinationTable", "None".into()),
        Template::load()
            .with("CoordinationTable", "None".into())
            .with("QuotaKey", "team-a".into()),
        Template::load().with("CoordinationTable", "shared-budget".into()),
        Template::load()
            .with("CoordinationTable", "shared-budget".into())
            .with("QuotaKey", "team-a".into()),
        Template::load().with("QuotaKey", "team-a".into()),
    ]
}

#[test]
fn coordination_table_is_created_on_demand_encrypted_and_wired_only_when_asked() {
    for t in coordination_modes() {
        let mode = (&t.params["CoordinationTable"], &t.params["QuotaKey"]);
        check_coordination(&t).unwrap_or_else(|e| panic!("with {mode:?}: {e}"));
        check_least_privilege(&t).unwrap_or_else(|e| panic!("with {mode:?}: {e}"));
    }
}

#[test]
fn coordination_defaults_create_the_table() {
    let t = Template::load();
    assert_eq!(t.params["CoordinationTable"], "Create");
    assert_eq!(t.params["QuotaKey"], "");
    assert_eq!(t.deployed_of_type("AWS::DynamoDB::Table").unwrap().len(), 1);
}

#[test]
fn fallbacks_alarm_exists_when_coordinated() {
    for t in coordination_modes() {
        if t.params["CoordinationTable"] != "None" {
            check_fallbacks_alarm(&t).unwrap();
            check_fallbacks_alarm(&t.with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into())).unwrap();
        }
    }
}

#[test]
fn dashboard_graphs_the_shared_budget() {
    check_dashboard_metrics(&Template::load(), &["SharedRate", "LeaseCalls", "Fallbacks", "Started"]).unwrap();
}

#[test]
fn conditions_and_if_are_evaluated_like_cloudformation() {
    let doc = serde_json::json!({
        "Parameters": {"P": {"Default": "a"}, "N": {"Default": 0}},
        "Conditions": {
            "IsA": {"Fn::Equals": [{"Ref": "P"}, "a"]},
            "NotA": {"Fn::Not": [{"Condition": "IsA"}]},
            "Zero": {"Fn::Equals": [{"Ref": "N"}, "0"]},
            "Both": {"Fn::And": [{"Condition": "IsA"}, {"Condition": "Zero"}]},
            "Either": {"Fn::Or": [{"Condition": "NotA"}, {"Condition": "Zero"}]}
        }
    });
    let t = Template::new(doc.clone());
    assert!(t.condition("IsA").unwrap() && !t.condition("NotA").unwrap());
    assert!(t.condition("Both").unwrap() && t.condition("Either").unwrap());
    let value = serde_json::json!({
        "x": {"Fn::If": ["IsA", 1, 2]},
        "y": {"Fn::If": ["NotA", 1, {"Ref": "AWS::NoValue"}]},
        "z": [{"Fn::If": ["NotA", 1, {"Ref": "AWS::NoValue"}]}, 3]
    });
    assert_eq!(t.evaluate(&value).unwrap(), Some(serde_json::json!({"x": 1, "z": [3]})));
    let t = Template::new(doc).with("P", "b".into());
    assert_eq!(
        t.evaluate(&value).unwrap(),
        Some(serde_json::json!({"x": 2, "y": 1, "z": [1, 3]}))
    );
    assert!(t.condition("Missing").is_err());
}

// ------------------------------------------------------------------- the checks do fail

/// Removes `key` from the object `value` (a test's edit of the template).
fn remove_key(value: &mut Value, key: &str) {
    value.as_object_mut().unwrap().remove(key);
}

fn edited(edit: impl FnOnce(&mut Value)) -> Template {
    let mut doc = load_template();
    edit(&mut doc);
    Template::new(doc)
}

#[test]
fn visibility_check_rejects_a_short_visibility_timeout() {
    // 6 x 60 + 1 (the default window) is 361: 360 must fail.
    let t = edited(|d| d["Resources"]["WorkQueue"]["Properties"]["VisibilityTimeout"] = 360.into());
    assert!(check_visibility(&t).is_err());
    // A mapping row too short for the largest window must fail too, even if the default is fine.
    let t = edited(|d| d["Mappings"]["QueueVisibility"]["900"]["Seconds"] = (6 * 900 + 1).into());
    assert!(check_visibility(&t).is_err());
    // And a longer timeout, with the default parameters.
    let t = Template::load().with("FunctionTimeout", 900.into());
    assert!(check_visibility(&t).is_ok());
}

#[test]
fn concurrency_check_rejects_reserved_below_maximum() {
    let t = edited(|d| d["Resources"]["StarterFunction"]["Properties"]["ReservedConcurrentExecutions"] = 1.into());
    assert!(check_concurrency(&t).is_err());
}

#[test]
fn concurrency_check_rejects_provisioned_mode_that_throttles_or_is_miswired() {
    // The defaults (MaxConcurrency 5, MaximumPollers 20) cannot serve 20 pollers x 10 invokes.
    assert!(check_concurrency(&Template::load().with("ProvisionedPollers", 2.into())).is_err());
    // Fewer pollers allowed than kept ready.
    assert!(check_concurrency(&provisioned().with("MaximumPollers", 2.into())).is_err());
    let broken: [fn(&mut Value); 4] = [
        // MaximumConcurrency kept in provisioned mode (Lambda rejects both).
        |d| {
            d["Resources"]["StarterFunction"]["Properties"]["Events"]["WorkQueue"]["Properties"]["ScalingConfig"] =
                serde_json::json!({"MaximumConcurrency": {"Ref": "MaxConcurrency"}})
        },
        // No ProvisionedPollerConfig at all.
        |d| {
            remove_key(
                &mut d["Resources"]["StarterFunction"]["Properties"]["Events"]["WorkQueue"]["Properties"],
                "ProvisionedPollerConfig",
            );
        },
        // MinimumPollers wired to the wrong parameter.
        |d| {
            d["Resources"]["StarterFunction"]["Properties"]["Events"]["WorkQueue"]["Properties"]
                ["ProvisionedPollerConfig"]["Fn::If"][1]["MinimumPollers"] =
                serde_json::json!({"Ref": "MaximumPollers"})
        },
        // MaximumPollers fixed instead of the parameter.
        |d| {
            d["Resources"]["StarterFunction"]["Properties"]["Events"]["WorkQueue"]["Properties"]
                ["ProvisionedPollerConfig"]["Fn::If"][1]["MaximumPollers"] = 2000.into()
        },
    ];
    for (i, edit) in broken.into_iter().enumerate() {
        let t = edited(edit);
        let t = Template {
            params: provisioned().params,
            doc: t.doc,
        };
        assert!(check_concurrency(&t).is_err(), "edit {i} passes");
    }
    // A ProvisionedPollerConfig in on-demand mode.
    let t = edited(|d| {
        d["Resources"]["StarterFunction"]["Properties"]["Events"]["WorkQueue"]["Properties"]
            ["ProvisionedPollerConfig"] = serde_json::json!({"MinimumPollers": 2, "MaximumPollers": 2})
    });
    assert!(check_concurrency(&t).is_err());
}

#[test]
fn provisioned_mode_check_rejects_missing_rules_and_wide_bounds() {
    let broken: [fn(&mut Value); 6] = [
        |d| {
            remove_key(&mut d["Rules"], "ProvisionedMode");
        },
        // Only the two-pollers assertion left.
        |d| {
            d["Rules"]["ProvisionedMode"]["Assertions"]
                .as_array_mut()
                .unwrap()
                .truncate(1);
        },
        // Only the coordination assertion left.
        |d| {
            d["Rules"]["ProvisionedMode"]["Assertions"]
                .as_array_mut()
                .unwrap()
                .remove(0);
        },
        |d| d["Parameters"]["MaximumPollers"]["MaxValue"] = 2000.into(),
        |d| d["Parameters"]["ProvisionedPollers"]["Default"] = 2.into(),
        |d| d["Parameters"]["ProvisionedPollers"]["MaxValue"] = 200.into(),
    ];
    for (i, edit) in broken.into_iter().enumerate() {
        assert!(check_provisioned_mode(&edited(edit)).is_err(), "edit {i} passes");
    }
}

#[test]
fn receive_count_check_rejects_fewer_than_five() {
    let t = Template::load().with("MaxReceiveCount", 4.into());
    assert!(check_max_receive_count(&t).is_err());
    let t = edited(|d| d["Parameters"]["MaxReceiveCount"]["MinValue"] = 1.into());
    assert!(check_max_receive_count(&t).is_err());
}

#[test]
fn batch_item_failures_check_rejects_a_missing_response_type() {
    let t = edited(|d| {
        d["Resources"]["StarterFunction"]["Properties"]["Events"]["WorkQueue"]["Properties"]["FunctionResponseTypes"] =
            Value::Array(vec![])
    });
    assert!(check_batch_item_failures(&t).is_err());
}

#[test]
fn least_privilege_check_rejects_wildcards() {
    let statement = |d: &mut Value| -> Value { starter_statements(d)[0].clone() };
    let t = edited(|d| {
        let mut s = statement(d);
        s["Resource"] = "*".into();
        starter_statements(d)[0] = s;
    });
    assert!(check_least_privilege(&t).is_err());
    let t = edited(|d| {
        let mut s = statement(d);
        s["Action"] = Value::from(vec!["sqs:*"]);
        starter_statements(d)[0] = s;
    });
    assert!(check_least_privilege(&t).is_err());
    let t = edited(|d| {
        d["Resources"]["StarterRole"]["Properties"]["ManagedPolicyArns"]
            .as_array_mut()
            .unwrap()
            .push("arn:aws:iam::aws:policy/service-role/AWSLambdaSQSQueueExecutionRole".into())
    });
    assert!(check_least_privilege(&t).is_err());
}

#[test]
fn environment_check_rejects_unknown_and_missing_names() {
    let t = edited(|d| {
        d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"]["STARTS_PER_SECONDS"] = 1.into()
    });
    assert!(check_environment(&t, known_variables()).is_err());
    let t = edited(|d| {
        remove_key(
            &mut d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"],
            "STATE_MACHINE_ARN",
        );
    });
    assert!(check_environment(&t, known_variables()).is_err());
}

#[test]
fn short_form_tags_are_rewritten_to_long_form() {
    let yaml = "a: !Ref P\nb: !GetAtt Q.Arn\nc: !Sub \"x-${P}\"\nd: !If [C, !Ref P, !Ref AWS::NoValue]\n";
    let v = to_json(serde_yaml::from_str(yaml).unwrap());
    assert_eq!(v["a"], serde_json::json!({"Ref": "P"}));
    assert_eq!(v["b"], serde_json::json!({"Fn::GetAtt": ["Q", "Arn"]}));
    assert_eq!(v["c"], serde_json::json!({"Fn::Sub": "x-${P}"}));
    assert_eq!(
        v["d"],
        serde_json::json!({"Fn::If": ["C", {"Ref": "P"}, {"Ref": "AWS::NoValue"}]})
    );
}

/// The starter role's policy statements, to edit.
fn starter_statements(d: &mut Value) -> &mut Value {
    &mut d["Resources"]["StarterRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
}

/// The starter role's statement kept under `condition` (the `then` of its `Fn::If`).
fn conditional_statement<'a>(d: &'a mut Value, condition: &str) -> &'a mut Value {
    let conditional = starter_statements(d)
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["Fn::If"][0] == condition)
        .unwrap_or_else(|| panic!("a statement under {condition}"));
    &mut conditional["Fn::If"][1]
}

/// The logical id of the resource of type `kind`.
fn resource_id(d: &Value, kind: &str) -> String {
    let resources = d["Resources"].as_object().unwrap();
    let (name, _) = resources
        .iter()
        .find(|(_, r)| r["Type"] == kind)
        .unwrap_or_else(|| panic!("a {kind}"));
    name.clone()
}

#[test]
fn coordination_check_rejects_a_table_that_is_not_on_demand_encrypted_or_keyed_by_pk() {
    let edits: [fn(&mut Value); 4] = [
        |p| p["BillingMode"] = "PROVISIONED".into(),
        |p| {
            remove_key(p, "SSESpecification");
        },
        |p| p["KeySchema"][0]["AttributeName"] = "id".into(),
        |p| p["AttributeDefinitions"][0]["AttributeType"] = "N".into(),
    ];
    for edit in edits {
        let t = edited(|d| {
            let id = resource_id(d, "AWS::DynamoDB::Table");
            edit(&mut d["Resources"][&id]["Properties"]);
        });
        assert!(check_coordination(&t).is_err());
    }
    // A table created whatever the parameter says.
    let t = edited(|d| {
        let id = resource_id(d, "AWS::DynamoDB::Table");
        remove_key(&mut d["Resources"][&id], "Condition");
    })
    .with("CoordinationTable", "None".into());
    assert!(check_coordination(&t).is_err());
}

#[test]
fn coordination_check_rejects_more_actions_other_tables_and_missing_wiring() {
    let broken: [fn(&mut Value); 5] = [
        |d| {
            conditional_statement(d, "UseCoordination")["Action"]
                .as_array_mut()
                .unwrap()
                .push("dynamodb:Scan".into())
        },
        |d| conditional_statement(d, "UseCoordination")["Action"] = Value::from(vec!["dynamodb:*"]),
        |d| conditional_statement(d, "UseCoordination")["Resource"] = "*".into(),
        |d| {
            conditional_statement(d, "UseCoordination")["Resource"] = Value::from(vec![
                serde_json::json!({"Fn::GetAtt": [resource_id(d, "AWS::DynamoDB::Table"), "Arn"]}),
                serde_json::json!({"Fn::Sub": "${CoordinationStore.Arn}/index/*"}),
            ])
        },
        |d| {
            remove_key(
                &mut d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"],
                "COORDINATION_TABLE",
            );
        },
    ];
    for (i, edit) in broken.into_iter().enumerate() {
        for mode in ["Create", "shared-budget"] {
            let t = edited(edit).with("CoordinationTable", mode.into());
            assert!(check_coordination(&t).is_err(), "edit {i} with {mode} passes");
        }
    }
    // The statement kept when coordination is off.
    let t = edited(|d| {
        let statement = conditional_statement(d, "UseCoordination").clone();
        starter_statements(d).as_array_mut().unwrap().push(statement);
    })
    .with("CoordinationTable", "None".into());
    assert!(check_coordination(&t).is_err());
    // An existing table's ARN that names another table.
    let t = edited(|d| {
        conditional_statement(d, "UseCoordination")["Resource"]["Fn::If"][2] =
            serde_json::json!({"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/other"})
    })
    .with("CoordinationTable", "shared-budget".into());
    assert!(check_coordination(&t).is_err());
    // QUOTA_KEY set although QuotaKey is empty.
    let t = edited(|d| {
        d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"]["QUOTA_KEY"] = "team-a".into()
    });
    assert!(check_coordination(&t).is_err());
}

#[test]
fn fallbacks_alarm_check_rejects_a_missing_or_silent_alarm() {
    let alarm_id = |d: &Value| -> String {
        let resources = d["Resources"].as_object().unwrap();
        resources
            .iter()
            .find(|(_, r)| r["Properties"]["MetricName"] == "Fallbacks")
            .map(|(name, _)| name.clone())
            .expect("an alarm on Fallbacks")
    };
    let t = edited(|d| {
        let id = alarm_id(d);
        remove_key(&mut d["Resources"], &id);
    });
    assert!(check_fallbacks_alarm(&t).is_err());
    let t = edited(|d| {
        let id = alarm_id(d);
        d["Resources"][&id]["Properties"]["Threshold"] = 10.into();
    });
    assert!(check_fallbacks_alarm(&t).is_err());
    let t = edited(|d| {
        let id = alarm_id(d);
        remove_key(&mut d["Resources"][&id]["Properties"], "AlarmActions");
    })
    .with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into());
    assert!(check_fallbacks_alarm(&t).is_err());
}

#[test]
fn dashboard_check_rejects_a_missing_metric_and_broken_json() {
    let t = Template::load();
    assert!(check_dashboard_metrics(&t, &["NoSuchMetric"]).is_err());
    let t = edited(|d| {
        let body = &mut d["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0];
        *body = body.as_str().unwrap().replace("\"SharedRate\"", "\"Shared\"").into();
    });
    assert!(check_dashboard_metrics(&t, &["SharedRate"]).is_err());
    let t = edited(|d| {
        let body = &mut d["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0];
        *body = body.as_str().unwrap().replacen("},", "}", 1).into();
    });
    assert!(check_dashboard_metrics(&t, &["SharedRate"]).is_err());
}

// ------------------------------------------------------------------ FIFO, alarms, claim-check

#[test]
fn queue_type_defaults_to_standard_and_fifo_makes_both_queues_fifo() {
    let standard = Template::load();
    assert_eq!(standard.params["QueueType"], "Standard");
    let fifo = Template::load().with("QueueType", "FIFO".into());
    for t in [standard, fifo] {
        let mode = t.params["QueueType"].clone();
        check_queue_type(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        // Everything else holds for both queue types.
        check_queues(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_visibility(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_max_receive_count(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_batch_item_failures(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_least_privilege(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_dlq_alarm(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
    }
}

#[test]
fn rules_reject_a_fifo_batch_above_ten_only() {
    let fifo = || Template::load().with("QueueType", "FIFO".into());
    assert!(check_rules(&fifo().with("BatchSize", 10.into())).is_ok());
    assert!(check_rules(&fifo().with("BatchSize", 1.into())).is_ok());
    assert!(check_rules(&fifo().with("BatchSize", 11.into())).is_err());
    assert!(check_rules(&fifo().with("BatchSize", 10000.into())).is_err());
    assert!(check_rules(&Template::load().with("BatchSize", 10000.into())).is_ok());
}

#[test]
fn queue_type_check_rejects_half_fifo_queues_and_missing_bounds() {
    let broken: [fn(&mut Value); 7] = [
        // The DLQ stays Standard.
        |d| d["Resources"]["DeadLetterQueue"]["Properties"]["FifoQueue"] = Value::Null,
        // A FIFO work queue without the .fifo name.
        |d| {
            d["Resources"]["WorkQueue"]["Properties"]["QueueName"] =
                serde_json::json!({"Fn::Sub": "${AWS::StackName}-work"})
        },
        // The DLQ's redrive source still names the Standard work queue.
        |d| {
            d["Resources"]["DeadLetterQueue"]["Properties"]["RedriveAllowPolicy"]["sourceQueueArns"] = serde_json::json!([
                {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:${AWS::StackName}-work"}
            ])
        },
        // No content-based deduplication.
        |d| {
            remove_key(
                &mut d["Resources"]["WorkQueue"]["Properties"],
                "ContentBasedDeduplication",
            );
        },
        // A batching window for FIFO.
        |d| {
            d["Resources"]["StarterFunction"]["Properties"]["Events"]["WorkQueue"]["Properties"]
                ["MaximumBatchingWindowInSeconds"] = serde_json::json!({"Ref": "MaximumBatchingWindowInSeconds"})
        },
        // No rule bounding BatchSize.
        |d| {
            remove_key(d, "Rules");
        },
        // A rule that lets 11 through.
        |d| {
            d["Rules"]["FifoBatchSize"]["Assertions"][0]["Assert"]["Fn::Contains"][0]
                .as_array_mut()
                .unwrap()
                .push("11".into())
        },
    ];
    for (i, edit) in broken.into_iter().enumerate() {
        let t = edited(edit).with("QueueType", "FIFO".into());
        assert!(check_queue_type(&t).is_err(), "edit {i} passes");
    }
    // FIFO queues whatever the parameter says.
    let t = edited(|d| d["Resources"]["WorkQueue"]["Properties"]["FifoQueue"] = true.into());
    assert!(check_queue_type(&t).is_err());
    let t = edited(|d| {
        d["Resources"]["DeadLetterQueue"]["Properties"]["QueueName"] =
            serde_json::json!({"Fn::Sub": "${AWS::StackName}-dlq.fifo"})
    });
    assert!(check_queue_type(&t).is_err());
}

#[test]
fn dlq_alarm_fires_on_new_arrivals() {
    check_dlq_alarm(&Template::load()).unwrap();
    check_dlq_alarm(&Template::load().with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into())).unwrap();
}

/// The DLQ alarm's metric math expression.
fn dlq_expression(d: &mut Value) -> &mut Value {
    let metrics = d["Resources"]["DeadLetterQueueAlarm"]["Properties"]["Metrics"]
        .as_array_mut()
        .unwrap();
    &mut metrics.iter_mut().find(|m| m.get("Expression").is_some()).unwrap()["Expression"]
}

#[test]
fn dlq_alarm_check_rejects_the_depth_alarm_and_other_queues() {
    // The old alarm: ApproximateNumberOfMessagesVisible > 0, in ALARM as long as anything sits there.
    let t = edited(|d| {
        d["Resources"]["DeadLetterQueueAlarm"]["Properties"] = serde_json::json!({
            "AlarmDescription": "sfn-pacer: messages are in the DLQ; redrive with start-message-move-task",
            "Namespace": "AWS/SQS",
            "MetricName": "ApproximateNumberOfMessagesVisible",
            "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["DeadLetterQueue", "QueueName"]}}],
            "Statistic": "Maximum", "Period": 60, "EvaluationPeriods": 1, "Threshold": 0,
            "ComparisonOperator": "GreaterThanThreshold"
        })
    });
    assert!(check_dlq_alarm(&t).is_err());
    // The depth through metric math, without DIFF/RATE.
    let t = edited(|d| *dlq_expression(d) = "FILL(visible, 0) + FILL(inflight, 0)".into());
    assert!(check_dlq_alarm(&t).is_err());
    // DIFF of something else.
    let t = edited(|d| *dlq_expression(d) = "DIFF(inflight)".into());
    assert!(check_dlq_alarm(&t).is_err());
    // The work queue instead of the DLQ.
    let t = edited(|d| {
        for m in d["Resources"]["DeadLetterQueueAlarm"]["Properties"]["Metrics"]
            .as_array_mut()
            .unwrap()
        {
            if let Some(dims) = m.pointer_mut("/MetricStat/Metric/Dimensions/0/Value") {
                *dims = serde_json::json!({"Fn::GetAtt": ["WorkQueue", "QueueName"]});
            }
        }
    });
    assert!(check_dlq_alarm(&t).is_err());
    // Silent with a topic.
    let t = edited(|d| {
        remove_key(
            &mut d["Resources"]["DeadLetterQueueAlarm"]["Properties"],
            "AlarmActions",
        );
    })
    .with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into());
    assert!(check_dlq_alarm(&t).is_err());
}

#[test]
fn account_start_execution_throttling_has_an_alarm() {
    check_account_throttle_alarm(&Template::load()).unwrap();
    check_account_throttle_alarm(
        &Template::load().with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into()),
    )
    .unwrap();
}

#[test]
fn account_throttle_alarm_check_rejects_other_dimensions_and_a_missing_alarm() {
    let alarm_id = |d: &Value| -> String {
        let resources = d["Resources"].as_object().unwrap();
        resources
            .iter()
            .find(|(_, r)| r["Properties"]["MetricName"] == "ThrottledEvents")
            .map(|(name, _)| name.clone())
            .expect("an alarm on ThrottledEvents")
    };
    let edits: [fn(&mut Value); 4] = [
        |p| p["Dimensions"][0]["Value"] = "StartSyncExecution".into(),
        |p| p["Dimensions"] = serde_json::json!([{"Name": "ServiceMetric", "Value": "StateTransition"}]),
        |p| p["Namespace"] = serde_json::json!({"Ref": "MetricsNamespace"}),
        |p| p["AlarmDescription"] = "sfn-pacer: StartExecution calls were throttled somewhere in the account.".into(),
    ];
    for (i, edit) in edits.into_iter().enumerate() {
        let t = edited(|d| {
            let id = alarm_id(d);
            edit(&mut d["Resources"][&id]["Properties"]);
        });
        assert!(check_account_throttle_alarm(&t).is_err(), "edit {i} passes");
    }
    let t = edited(|d| {
        let id = alarm_id(d);
        remove_key(&mut d["Resources"], &id);
    });
    assert!(check_account_throttle_alarm(&t).is_err());
    // The function's own StartThrottledAlarm stays.
    let t = edited(|d| {
        remove_key(&mut d["Resources"], "StartThrottledAlarm");
    });
    assert!(check_account_throttle_alarm(&t).is_err());
}

/// The `ClaimCheckBucket` modes: create (default), off, an existing bucket; with and without the
/// sample state machine.
fn claim_check_modes() -> Vec<Template> {
    let existing = "arn:aws:states:us-east-1:123456789012:stateMachine:mine";
    let mut modes = Vec::new();
    for bucket in ["Create", "None", "my-inputs.example"] {
        modes.push(Template::load().with("ClaimCheckBucket", bucket.into()));
        modes.push(
            Template::load()
                .with("ClaimCheckBucket", bucket.into())
                .with("StateMachineArn", existing.into()),
        );
    }
    modes
}

#[test]
fn claim_check_bucket_is_private_expiring_and_wired_only_when_asked() {
    assert_eq!(Template::load().params["ClaimCheckBucket"], "Create");
    assert_eq!(Template::load().params["ClaimCheckRetentionDays"], 90);
    for t in claim_check_modes() {
        let mode = (&t.params["ClaimCheckBucket"], &t.params["StateMachineArn"]);
        check_claim_check(&t).unwrap_or_else(|e| panic!("with {mode:?}: {e}"));
        check_least_privilege(&t).unwrap_or_else(|e| panic!("with {mode:?}: {e}"));
        check_environment(&t, known_variables()).unwrap_or_else(|e| panic!("with {mode:?}: {e}"));
    }
}

#[test]
fn claim_check_check_rejects_an_open_unencrypted_or_unexpiring_bucket() {
    let edits: [fn(&mut Value); 6] = [
        |p| {
            remove_key(p, "BucketEncryption");
        },
        |p| p["PublicAccessBlockConfiguration"]["BlockPublicPolicy"] = false.into(),
        |p| {
            remove_key(p, "PublicAccessBlockConfiguration");
        },
        |p| {
            remove_key(p, "LifecycleConfiguration");
        },
        |p| p["LifecycleConfiguration"]["Rules"][0]["Prefix"] = "inputs/".into(),
        |p| p["LifecycleConfiguration"]["Rules"][0]["Status"] = "Disabled".into(),
    ];
    for (i, edit) in edits.into_iter().enumerate() {
        let t = edited(|d| {
            let id = resource_id(d, "AWS::S3::Bucket");
            edit(&mut d["Resources"][&id]["Properties"]);
        });
        assert!(check_claim_check(&t).is_err(), "edit {i} passes");
    }
    // No TLS-only bucket policy.
    let t = edited(|d| {
        let resources = d["Resources"].as_object_mut().unwrap();
        resources.retain(|_, r| r["Type"] != "AWS::S3::BucketPolicy");
    });
    assert!(check_claim_check(&t).is_err());
    // A bucket created whatever the parameter says.
    let t = edited(|d| {
        let id = resource_id(d, "AWS::S3::Bucket");
        remove_key(&mut d["Resources"][&id], "Condition");
    })
    .with("ClaimCheckBucket", "None".into());
    assert!(check_claim_check(&t).is_err());
}

#[test]
fn claim_check_check_rejects_more_actions_wider_resources_and_missing_wiring() {
    let broken: [fn(&mut Value); 6] = [
        |d| conditional_statement(d, "UseClaimCheck")["Action"] = Value::from(vec!["s3:PutObject", "s3:GetObject"]),
        |d| conditional_statement(d, "UseClaimCheck")["Action"] = "s3:*".into(),
        |d| conditional_statement(d, "UseClaimCheck")["Resource"] = "*".into(),
        // The whole bucket, not the prefix.
        |d| {
            conditional_statement(d, "UseClaimCheck")["Resource"] = serde_json::json!({"Fn::If": ["CreateClaimCheckBucket",
                {"Fn::Sub": "${ClaimCheckStore.Arn}/*"},
                {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ClaimCheckBucket}/*"}]})
        },
        |d| {
            remove_key(
                &mut d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"],
                "CLAIM_CHECK_BUCKET",
            );
        },
        |d| remove_key(&mut d["Outputs"], "ClaimCheckBucketName"),
    ];
    for (i, edit) in broken.into_iter().enumerate() {
        for mode in ["Create", "my-inputs.example"] {
            let t = edited(edit).with("ClaimCheckBucket", mode.into());
            assert!(check_claim_check(&t).is_err(), "edit {i} with {mode} passes");
        }
    }
    // Wildcards the least-privilege check rejects outright.
    for resource in ["*", "arn:aws:s3:::*/sfn-pacer/*", "arn:aws:s3:::inputs/*"] {
        let t = edited(|d| conditional_statement(d, "UseClaimCheck")["Resource"] = resource.into());
        assert!(check_least_privilege(&t).is_err(), "{resource} passes");
    }
    let t = edited(|d| conditional_statement(d, "UseClaimCheck")["Action"] = "s3:Put*".into());
    assert!(check_least_privilege(&t).is_err());
    // The prefix wildcard is only for S3 actions.
    let t = edited(|d| conditional_statement(d, "UseClaimCheck")["Action"] = "sqs:SendMessage".into());
    assert!(check_least_privilege(&t).is_err());
    // Kept when claim-check is off.
    let t = edited(|d| {
        let statement = conditional_statement(d, "UseClaimCheck").clone();
        starter_statements(d).as_array_mut().unwrap().push(statement);
    })
    .with("ClaimCheckBucket", "None".into());
    assert!(check_claim_check(&t).is_err());
    // CLAIM_CHECK_BUCKET set although claim-check is off.
    let t = edited(|d| {
        d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"]["CLAIM_CHECK_BUCKET"] =
            "inputs".into()
    })
    .with("ClaimCheckBucket", "None".into());
    assert!(check_claim_check(&t).is_err());
    // An existing bucket's ARN that names another bucket.
    let t = edited(|d| {
        conditional_statement(d, "UseClaimCheck")["Resource"]["Fn::If"][2] =
            serde_json::json!({"Fn::Sub": "arn:${AWS::Partition}:s3:::other/sfn-pacer/*"})
    })
    .with("ClaimCheckBucket", "my-inputs.example".into());
    assert!(check_claim_check(&t).is_err());
    // The sample state machine cannot read the inputs.
    let t = edited(|d| {
        let policies = d["Resources"]["SampleStateMachine"]["Properties"]["Policies"][0]["Statement"]
            .as_array_mut()
            .unwrap();
        policies.retain(|s| s.get("Fn::If").is_none());
    });
    assert!(check_claim_check(&t).is_err());
}

// ------------------------------------------------------------------ batch executions (tests)

/// Batch executions in the ways they can be deployed: Standard with a created or an existing
/// table, Express with and without one, with FIFO queues, the largest batch, and an existing
/// state machine.
fn batch_modes() -> Vec<Template> {
    let batch = |n: i64| Template::load().with("MessagesPerExecution", n.into());
    vec![
        batch(10),
        batch(99),
        batch(10).with("CoordinationTable", "shared-budget".into()),
        batch(10).with("WorkflowType", "EXPRESS".into()),
        batch(10)
            .with("WorkflowType", "EXPRESS".into())
            .with("CoordinationTable", "None".into()),
        batch(10).with("QueueType", "FIFO".into()),
        batch(10).with("ClaimCheckBucket", "None".into()),
        batch(10).with(
            "StateMachineArn",
            "arn:aws:states:us-east-1:123456789012:stateMachine:mine".into(),
        ),
    ]
}

/// The mode's parameters that matter for batch executions, for messages.
fn batch_mode(t: &Template) -> String {
    [
        "MessagesPerExecution",
        "WorkflowType",
        "CoordinationTable",
        "QueueType",
        "StateMachineArn",
    ]
    .iter()
    .map(|p| format!("{p}={}", text(&t.params[*p])))
    .collect::<Vec<_>>()
    .join(" ")
}

#[test]
fn messages_per_execution_is_a_parameter_passed_to_the_function() {
    let t = Template::load();
    assert_eq!(t.params["MessagesPerExecution"], 1);
    check_messages_per_execution(&t).unwrap();
    check_environment(&t, known_variables()).unwrap();
}

#[test]
fn batches_on_standard_need_the_coordination_table() {
    check_batch_rule(&Template::load()).unwrap();
}

#[test]
fn the_sample_state_machine_follows_messages_per_execution() {
    check_sample_machines_alike(&Template::load()).unwrap();
    let existing = "arn:aws:states:us-east-1:123456789012:stateMachine:mine";
    for n in [1, 2, 99] {
        for arn in ["", existing] {
            for workflow in ["STANDARD", "EXPRESS"] {
                let t = Template::load()
                    .with("MessagesPerExecution", n.into())
                    .with("StateMachineArn", arn.into())
                    .with("WorkflowType", workflow.into());
                check_state_machine_selection(&t).unwrap_or_else(|e| panic!("with {}: {e}", batch_mode(&t)));
                check_references(&t).unwrap_or_else(|e| panic!("with {}: {e}", batch_mode(&t)));
            }
        }
    }
}

#[test]
fn batch_sample_definition_maps_over_the_items() {
    let batch = read_definition(BATCH_DEFINITION).unwrap();
    let single = read_definition(SINGLE_DEFINITION).unwrap();
    check_batch_definition(&batch, &single).unwrap();
}

#[test]
fn batch_claims_are_allowed_on_standard_only_and_only_on_their_items() {
    for t in batch_modes() {
        let mode = batch_mode(&t);
        check_rules(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_coordination(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_least_privilege(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_environment(&t, known_variables()).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_state_machine_selection(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_references(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_claim_check(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_queue_type(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        check_dlq_alarm(&t).unwrap_or_else(|e| panic!("with {mode}: {e}"));
        let (statements, _) = function_policies(&t).unwrap();
        let claims = statements.iter().any(|s| leading_keys(s) == CLAIM_KEYS);
        assert_eq!(claims, claims_expected(&t).unwrap(), "with {mode}");
    }
    // Single executions write no claims, coordinated or not.
    for t in coordination_modes() {
        assert!(!claims_expected(&t).unwrap());
        check_coordination(&t).unwrap();
    }
}

#[test]
fn dashboard_graphs_the_batch_metrics() {
    check_dashboard_metrics(
        &Template::load(),
        &["Executions", "MessagesPerExecution", "ClaimsWritten", "ClaimsFound"],
    )
    .unwrap();
}

// ------------------------------------------------------- batch executions: the checks do fail

#[test]
fn coordination_check_rejects_missing_wider_or_misplaced_claims() {
    let batch = |t: Template| t.with("MessagesPerExecution", 10.into());
    let broken: [fn(&mut Value); 8] = [
        // No claims statement.
        |d| {
            starter_statements(d)
                .as_array_mut()
                .unwrap()
                .retain(|s| s["Fn::If"][0] != "UseClaims");
        },
        // Claims may be changed or deleted.
        |d| {
            conditional_statement(d, "UseClaims")["Action"]
                .as_array_mut()
                .unwrap()
                .push("dynamodb:UpdateItem".into())
        },
        |d| {
            conditional_statement(d, "UseClaims")["Action"]
                .as_array_mut()
                .unwrap()
                .push("dynamodb:DeleteItem".into())
        },
        // The claims cannot be read back after a refused transaction.
        |d| {
            conditional_statement(d, "UseClaims")["Action"]
                .as_array_mut()
                .unwrap()
                .retain(|a| a != "dynamodb:BatchGetItem")
        },
        // On any item, or without the execution records.
        |d| {
            remove_key(conditional_statement(d, "UseClaims"), "Condition");
        },
        |d| {
            conditional_statement(d, "UseClaims")["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] =
                Value::from(vec!["claim#*"])
        },
        // The budget statement widened to the claims instead.
        |d| {
            conditional_statement(d, "UseCoordination")["Condition"]["ForAllValues:StringLike"]
                ["dynamodb:LeadingKeys"] = Value::from(vec!["quota#*", "claim#*", "execution#*"])
        },
        // Another table.
        |d| {
            conditional_statement(d, "UseClaims")["Resource"] =
                serde_json::json!({"Fn::GetAtt": ["ClaimCheckStore", "Arn"]})
        },
    ];
    for (i, edit) in broken.into_iter().enumerate() {
        for table in ["Create", "shared-budget"] {
            let t = batch(edited(edit)).with("CoordinationTable", table.into());
            assert!(check_coordination(&t).is_err(), "edit {i} with {table} passes");
        }
    }
    // Claims on Express, or with single executions.
    let t = batch(edited(
        |d| {
            d["Conditions"]["UseClaims"] =
                serde_json::json!({"Fn::And": [{"Condition": "Batching"}, {"Condition": "UseCoordination"}]})
        },
    ))
    .with("WorkflowType", "EXPRESS".into());
    assert!(check_coordination(&t).is_err());
    let t = edited(|d| d["Conditions"]["UseClaims"] = serde_json::json!({"Condition": "UseCoordination"}));
    assert!(check_coordination(&t).is_err());
}

#[test]
fn messages_per_execution_check_rejects_other_bounds_and_missing_wiring() {
    let broken: [fn(&mut Value); 7] = [
        |d| d["Parameters"]["MessagesPerExecution"]["Default"] = 10.into(),
        // 100 would need 101 writes in one transaction.
        |d| d["Parameters"]["MessagesPerExecution"]["MaxValue"] = 100.into(),
        |d| d["Parameters"]["MessagesPerExecution"]["Type"] = "String".into(),
        |d| {
            remove_key(
                &mut d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"],
                "MESSAGES_PER_EXECUTION",
            );
        },
        |d| {
            for group in d["Metadata"]["AWS::CloudFormation::Interface"]["ParameterGroups"]
                .as_array_mut()
                .unwrap()
            {
                group["Parameters"]
                    .as_array_mut()
                    .unwrap()
                    .retain(|p| p != "MessagesPerExecution");
            }
        },
        // Fractions and out-of-range values reach the function.
        |d| {
            remove_key(&mut d["Rules"], "MessagesPerExecutionWhole");
        },
        |d| {
            d["Rules"]["MessagesPerExecutionWhole"]["Assertions"][0]["Assert"]["Fn::Contains"][0]
                .as_array_mut()
                .unwrap()
                .push("100".into())
        },
    ];
    for (i, edit) in broken.into_iter().enumerate() {
        assert!(check_messages_per_execution(&edited(edit)).is_err(), "edit {i} passes");
    }
}

#[test]
fn batch_rule_check_rejects_a_missing_or_wider_rule() {
    let broken: [fn(&mut Value); 5] = [
        |d| {
            remove_key(&mut d["Rules"], "BatchClaims");
        },
        // Only one of the two assertions.
        |d| {
            d["Rules"]["BatchClaims"]["Assertions"]
                .as_array_mut()
                .unwrap()
                .truncate(1);
        },
        |d| {
            d["Rules"]["BatchClaims"]["Assertions"]
                .as_array_mut()
                .unwrap()
                .remove(0);
        },
        // Also rejects Express batches without a table, which need none.
        |d| {
            d["Rules"]["BatchClaims"]["RuleCondition"] =
                serde_json::json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "MessagesPerExecution"}, "1"]}]})
        },
        // Rejects single executions without a table.
        |d| {
            remove_key(&mut d["Rules"]["BatchClaims"], "RuleCondition");
        },
    ];
    for (i, edit) in broken.into_iter().enumerate() {
        assert!(check_batch_rule(&edited(edit)).is_err(), "edit {i} passes");
    }
}

#[test]
fn state_machine_checks_reject_a_fixed_choice_and_dangling_references() {
    let batch = |t: Template| t.with("MessagesPerExecution", 10.into());
    // Every place that may name the sample state machine, back to naming the single one.
    let single_only: [fn(&mut Value); 5] = [
        |d| d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"]["STATE_MACHINE_ARN"] = serde_json::json!({"Fn::If": ["CreateStateMachine", {"Ref": "SampleStateMachine"}, {"Ref": "StateMachineArn"}]}),
        |d| starter_statements(d)[0]["Resource"] = serde_json::json!({"Fn::If": ["CreateStateMachine", {"Ref": "SampleStateMachine"}, {"Ref": "StateMachineArn"}]}),
        |d| d["Resources"]["ExecutionThrottledAlarm"]["Properties"]["Dimensions"][0]["Value"] = serde_json::json!({"Fn::If": ["CreateStateMachine", {"Ref": "SampleStateMachine"}, {"Ref": "StateMachineArn"}]}),
        |d| d["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][1]["StateMachine"] = serde_json::json!({"Fn::If": ["CreateStateMachine", {"Ref": "SampleStateMachine"}, {"Ref": "StateMachineArn"}]}),
        |d| d["Outputs"]["StateMachineArn"]["Value"] = serde_json::json!({"Fn::If": ["CreateStateMachine", {"Ref": "SampleStateMachine"}, {"Ref": "StateMachineArn"}]}),
    ];
    for (i, edit) in single_only.into_iter().enumerate() {
        let t = batch(edited(edit));
        assert!(check_state_machine_selection(&t).is_err(), "edit {i} passes");
        assert!(check_references(&t).is_err(), "edit {i} passes the reference check");
    }
    // The batch definition never chosen, or both machines created.
    let t = batch(edited(|d| {
        d["Resources"]["SampleBatchStateMachine"]["Properties"]["DefinitionUri"] = SINGLE_DEFINITION.into()
    }));
    assert!(check_state_machine_selection(&t).is_err());
    let t = edited(|d| d["Resources"]["SampleBatchStateMachine"]["Condition"] = "CreateStateMachine".into());
    assert!(check_state_machine_selection(&t).is_err());
    // The batch machine without the claim-check reads the single one has.
    let t = edited(|d| {
        d["Resources"]["SampleBatchStateMachine"]["Properties"]["Policies"][0]["Statement"]
            .as_array_mut()
            .unwrap()
            .retain(|s| s.get("Fn::If").is_none());
    });
    assert!(check_sample_machines_alike(&t).is_err());
    assert!(check_claim_check(&batch(t)).is_err());
    // A Sub variable naming a resource that is not created.
    let t = edited(|d| {
        d["Resources"]["StarterLogGroup"]["Properties"]["LogGroupName"] =
            serde_json::json!({"Fn::Sub": "/aws/x/${SampleBatchStateMachine.Name}"})
    });
    assert!(check_references(&t).is_err());
    assert!(check_references(&batch(t)).is_ok());
}

#[test]
fn batch_definition_check_rejects_other_paths_unbounded_maps_and_broken_graphs() {
    let single = read_definition(SINGLE_DEFINITION).unwrap();
    let edits: [fn(&mut Value); 8] = [
        |m| m["ItemsPath"] = "$.messages".into(),
        |m| {
            remove_key(m, "MaxConcurrency");
        },
        // 0 is unbounded.
        |m| m["MaxConcurrency"] = 0.into(),
        |m| m["MaxConcurrency"] = 1000.into(),
        |m| m["Type"] = "Parallel".into(),
        |m| {
            m["ItemProcessor"]["StartAt"] = "Missing".into();
        },
        // The item's Pass no longer records the execution's name.
        |m| {
            remove_key(&mut m["ItemProcessor"]["States"]["Work"]["Parameters"], "execution.$");
        },
        // Goes on to a state that does not exist.
        |m| {
            remove_key(m, "End");
            m["Next"] = "Missing".into();
        },
    ];
    for (i, edit) in edits.into_iter().enumerate() {
        let mut batch = read_definition(BATCH_DEFINITION).unwrap();
        let start = batch["StartAt"].as_str().unwrap().to_string();
        edit(&mut batch["States"][&start]);
        assert!(check_batch_definition(&batch, &single).is_err(), "edit {i} passes");
    }
    // An unreachable state.
    let mut batch = read_definition(BATCH_DEFINITION).unwrap();
    batch["States"]["Orphan"] = serde_json::json!({"Type": "Succeed"});
    assert!(check_batch_definition(&batch, &single).is_err());
}

// ------------------------------------------------------------ the account's quota (issue 18)

/// The quota sync's actions: Service Quotas and CloudWatch reads, and the budget item's.
const QUOTA_SYNC_ACTIONS: &[&str] = &[
    "cloudwatch:GetMetricData",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "servicequotas:GetServiceQuota",
    "servicequotas:ListAWSDefaultServiceQuotas",
    "servicequotas:ListServiceQuotas",
];
/// The actions that support no resource-level permissions: only these may name `"*"`.
const NO_RESOURCE_LEVEL: &[&str] = &[
    "cloudwatch:GetMetricData",
    "servicequotas:ListAWSDefaultServiceQuotas",
    "servicequotas:ListServiceQuotas",
];

fn actions_of(statement: &Value) -> Vec<String> {
    let mut actions = Vec::new();
    strings(&statement["Action"], &mut actions);
    actions.sort();
    actions
}

/// The scheduled quota sync exists exactly when `QuotaSyncSchedule` is set (and coordinated; a
/// rule rejects a schedule without a table): one function on that schedule, told the starter's
/// table, key and workflow type and `QuotaSyncShare`, whose role allows exactly
/// [`QUOTA_SYNC_ACTIONS`]: `"*"` only for the actions without resource-level permissions,
/// `GetServiceQuota` on Step Functions' quotas only, the item actions on the budget items only.
fn check_quota_sync(t: &Template) -> Result<(), String> {
    let schedule = text(t.params.get("QuotaSyncSchedule").unwrap_or(&Value::from("")));
    let coordinated = text(t.params.get("CoordinationTable").unwrap_or(&Value::Null)) != "None";
    let (starter_id, starter) = t.starter()?;
    let others: Vec<(String, Value)> = t
        .deployed_of_type("AWS::Serverless::Function")?
        .into_iter()
        .filter(|(name, f)| name != starter_id && f["Properties"]["CodeUri"] != starter["Properties"]["CodeUri"])
        .collect();
    if schedule.is_empty() || !coordinated {
        if let Some((name, _)) = others.first() {
            return Err(format!("function {name} is deployed without QuotaSyncSchedule"));
        }
        if !schedule.is_empty() && check_rules(t).is_ok() {
            return Err("no rule rejects QuotaSyncSchedule without a coordination table".into());
        }
        return Ok(());
    }
    let [(name, sync)] = others.as_slice() else {
        return Err(format!("expected one quota sync function, found {}", others.len()));
    };
    let props = &sync["Properties"];
    let events: Vec<&Value> = props["Events"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, e)| e)
        .collect();
    let on_schedule = serde_json::json!({"Ref": "QuotaSyncSchedule"});
    if events.len() != 1 || events[0]["Type"] != "Schedule" || events[0]["Properties"]["Schedule"] != on_schedule {
        return Err(format!(
            "function {name} does not run on QuotaSyncSchedule alone: {events:?}"
        ));
    }
    let variables = props["Environment"]["Variables"]
        .as_object()
        .ok_or("the sync has no environment")?;
    for variable in variables.keys() {
        if !quota_sync::config::VARIABLES.contains(&variable.as_str()) {
            return Err(format!("environment variable {variable} is not read by the quota sync"));
        }
    }
    let starter_env = &t.evaluate(&starter["Properties"])?.unwrap_or_default()["Environment"]["Variables"];
    for shared in ["COORDINATION_TABLE", "QUOTA_KEY", "WORKFLOW_TYPE", "METRICS_NAMESPACE"] {
        let evaluated = t.evaluate(props)?.unwrap_or_default();
        if evaluated["Environment"]["Variables"].get(shared) != starter_env.get(shared) {
            return Err(format!("the sync's {shared} is not the starter's"));
        }
    }
    if variables.get("QUOTA_SHARE") != Some(&serde_json::json!({"Ref": "QuotaSyncShare"})) {
        return Err("QUOTA_SHARE is not QuotaSyncShare".into());
    }
    let (statements, managed) = policies_of(t, sync)?;
    let mut allowed: Vec<String> = statements.iter().flat_map(actions_of).collect();
    allowed.sort();
    if allowed != QUOTA_SYNC_ACTIONS {
        return Err(format!(
            "the sync's role allows {allowed:?}, not {QUOTA_SYNC_ACTIONS:?}"
        ));
    }
    let (budget_statements, _) = function_policies(t)?;
    let budget = budget_statements
        .iter()
        .find(|s| leading_keys(s) == BUDGET_KEYS)
        .ok_or("the starter has no budget statement")?;
    for statement in &statements {
        let actions = actions_of(statement);
        if statement.get("NotAction").is_some() || statement.get("NotResource").is_some() {
            return Err(format!("statement {statement} uses NotAction or NotResource"));
        }
        let mut resources = Vec::new();
        strings(&statement["Resource"], &mut resources);
        if resources.iter().any(|r| r == "*") && !actions.iter().all(|a| NO_RESOURCE_LEVEL.contains(&a.as_str())) {
            return Err(format!(
                "statement {} allows {actions:?} on every resource",
                statement["Sid"]
            ));
        }
        if actions.iter().any(|a| a == "servicequotas:GetServiceQuota")
            && !(actions.len() == 1
                && resources.len() == 1
                && resources[0].ends_with(":servicequotas:${AWS::Region}:${AWS::AccountId}:states/*"))
        {
            return Err(format!(
                "GetServiceQuota is not limited to Step Functions' quotas: {resources:?}"
            ));
        }
        if actions.iter().any(|a| a.starts_with("dynamodb:")) {
            let arn = match budget["Resource"].get("Fn::Sub").and_then(Value::as_str) {
                Some(sub) => Value::from(t.substitute(sub)),
                None => budget["Resource"].clone(),
            };
            check_table_statement(t, "sync's budget", statement, COORDINATION_ACTIONS, BUDGET_KEYS, &arn)?;
        }
    }
    for policy in &managed {
        let mut found = Vec::new();
        strings(policy, &mut found);
        if !found
            .iter()
            .any(|s| ALLOWED_MANAGED_POLICIES.iter().any(|a| s.ends_with(a)))
        {
            return Err(format!("managed policy {policy} is not one of the logs/X-Ray basics"));
        }
    }
    Ok(())
}

/// The quota proximity alarms: the account's `AWS/States` `ConsumedCapacity` as a percentage of
/// `ProvisionedRefillRate` (metric math over 1-minute averages), above `QuotaProximityPercent`
/// in every one of `QuotaProximityMinutes` datapoints; for StartExecution always, for state
/// transitions exactly when batch executions run on Standard. Each says what to do and notifies.
fn check_quota_proximity(t: &Template) -> Result<(), String> {
    let batching = t.number(t.params.get("MessagesPerExecution").unwrap_or(&Value::from(1)))? > 1.0;
    let standard = text(t.params.get("WorkflowType").unwrap_or(&Value::Null)) == "STANDARD";
    let mut wanted = vec![("APIName", "StartExecution")];
    if batching && standard {
        wanted.push(("ServiceMetric", "StateTransition"));
    }
    let alarms = t.deployed_of_type("AWS::CloudWatch::Alarm")?;
    let proximity: Vec<&(String, Value)> = alarms
        .iter()
        .filter(|(_, a)| alarm_metrics(a).iter().any(|m| m["MetricName"] == "ConsumedCapacity"))
        .collect();
    if proximity.len() != wanted.len() {
        return Err(format!(
            "expected {} quota proximity alarm(s) ({wanted:?}), found {}",
            wanted.len(),
            proximity.len()
        ));
    }
    for (dimension, value) in wanted {
        let dimensions = serde_json::json!([{"Name": dimension, "Value": value}]);
        let (name, alarm) = proximity
            .iter()
            .map(|(n, a)| (n, a))
            .find(|(_, a)| alarm_metrics(a).iter().all(|m| m["Dimensions"] == dimensions))
            .ok_or_else(|| format!("no quota proximity alarm on {dimension}={value} alone"))?;
        let props = &alarm["Properties"];
        let queries = props["Metrics"].as_array().ok_or("no metric math")?;
        let id_of = |metric: &str| {
            queries
                .iter()
                .find(|q| {
                    let stat = &q["MetricStat"];
                    stat["Metric"]["Namespace"] == "AWS/States"
                        && stat["Metric"]["MetricName"] == metric
                        && stat["Stat"] == "Average"
                        && t.number(&stat["Period"]).ok() == Some(60.0)
                        && q["ReturnData"] == false
                })
                .and_then(|q| q["Id"].as_str())
        };
        let (Some(consumed), Some(refill)) = (id_of("ConsumedCapacity"), id_of("ProvisionedRefillRate")) else {
            return Err(format!(
                "alarm {name} lacks 1-minute averages of ConsumedCapacity and ProvisionedRefillRate"
            ));
        };
        let returned: Vec<&Value> = queries.iter().filter(|q| q["ReturnData"] == true).collect();
        let expression = format!("100 * {consumed} / {refill}");
        if returned.len() != 1 || returned[0]["Expression"] != expression.as_str() {
            return Err(format!("alarm {name} does not alarm on {expression:?} alone"));
        }
        let refs = |key: &str, param: &str| props[key] == serde_json::json!({"Ref": param});
        if !refs("Threshold", "QuotaProximityPercent")
            || !refs("EvaluationPeriods", "QuotaProximityMinutes")
            || !refs("DatapointsToAlarm", "QuotaProximityMinutes")
            || props["ComparisonOperator"] != "GreaterThanThreshold"
            || props["TreatMissingData"] != "notBreaching"
        {
            return Err(format!(
                "alarm {name} does not fire above QuotaProximityPercent for QuotaProximityMinutes minutes"
            ));
        }
        let mut description = Vec::new();
        strings(&props["AlarmDescription"], &mut description);
        if !description.concat().contains("docs/deploy.md") {
            return Err(format!("alarm {name} does not point to what to do (docs/deploy.md)"));
        }
        check_notifies(t, name, props)?;
    }
    Ok(())
}

/// The dashboard graphs the account's consumption against each quota, and the synced quota.
fn check_quota_widgets(t: &Template) -> Result<(), String> {
    check_dashboard_metrics(t, &[])?;
    let (_, dashboard) = t.only("AWS::CloudWatch::Dashboard")?;
    let body = dashboard["Properties"]["DashboardBody"].to_string();
    for row in [
        r#"[\"AWS/States\", \"ConsumedCapacity\", \"APIName\", \"StartExecution\""#,
        r#"[\"AWS/States\", \"ConsumedCapacity\", \"ServiceMetric\", \"StateTransition\""#,
        r#"[\".\", \"ProvisionedRefillRate\", \".\", \".\""#,
        r#"\"QuotaRate\", \"QuotaKey\", \"${BudgetKey}\""#,
    ] {
        if !body.contains(row) {
            return Err(format!("the dashboard does not graph {row}"));
        }
    }
    Ok(())
}

/// The function is told the queues' retention (how long claims are kept), as the queues have it.
fn check_retention(t: &Template) -> Result<(), String> {
    let variables = &t.function()?["Properties"]["Environment"]["Variables"];
    let work = t.work_queue()?;
    let dlq_name = logical_id(&work["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]).ok_or("no DLQ")?;
    for (variable, queue) in [
        ("QUEUE_RETENTION_SECONDS", work),
        ("DLQ_RETENTION_SECONDS", &t.resources()[dlq_name]),
    ] {
        let told = t.number(
            variables
                .get(variable)
                .ok_or_else(|| format!("{variable} is not set"))?,
        )?;
        let kept = t.number(&queue["Properties"]["MessageRetentionPeriod"])?;
        if told != kept {
            return Err(format!("{variable} is {told}, the queue keeps messages {kept} s"));
        }
    }
    Ok(())
}

fn scheduled() -> Template {
    Template::load().with("QuotaSyncSchedule", "rate(1 hour)".into())
}

#[test]
fn quota_sync_is_off_by_default_and_least_privilege_when_scheduled() {
    for t in [
        Template::load(),
        scheduled(),
        scheduled().with("CoordinationTable", "shared-budget".into()),
        scheduled().with("QuotaKey", "team-a".into()),
        scheduled().with("WorkflowType", "EXPRESS".into()),
    ] {
        check_quota_sync(&t).unwrap_or_else(|e| panic!("{:?}: {e}", t.params["QuotaSyncSchedule"]));
        check_rules(&t).unwrap();
    }
    assert_eq!(
        Template::load()
            .deployed_of_type("AWS::Serverless::Function")
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        scheduled().deployed_of_type("AWS::Serverless::Function").unwrap().len(),
        2
    );
    let none = scheduled().with("CoordinationTable", "None".into());
    assert!(check_rules(&none)
        .unwrap_err()
        .contains("QuotaSyncSchedule needs coordinated mode"));
}

/// The statement `sid` of a policy document's `Statement` list, to edit.
fn statement_mut<'a>(statements: &'a mut Value, sid: &str) -> &'a mut Value {
    statements
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["Sid"] == sid)
        .unwrap()
}

fn sync_statement<'a>(d: &'a mut Value, sid: &str) -> &'a mut Value {
    let role = &mut d["Resources"]["QuotaSyncRole"]["Properties"];
    statement_mut(&mut role["Policies"][0]["PolicyDocument"]["Statement"], sid)
}

#[test]
fn quota_sync_check_rejects_wider_privilege_and_miswiring() {
    let broken = |edit: fn(&mut Value)| {
        let t = edited(edit).with("QuotaSyncSchedule", "rate(1 hour)".into());
        check_quota_sync(&t).unwrap_err()
    };
    let e = broken(|d| sync_statement(d, "ListQuotas")["Action"] = serde_json::json!(["servicequotas:*"]));
    assert!(e.contains("allows"), "{e}");
    let e = broken(|d| sync_statement(d, "ReadQuota")["Resource"] = "*".into());
    assert!(e.contains("every resource"), "{e}");
    let e = broken(|d| {
        remove_key(sync_statement(d, "BudgetItem"), "Condition");
    });
    assert!(e.contains("condition"), "{e}");
    let e = broken(|d| {
        d["Resources"]["QuotaSyncFunction"]["Properties"]["Events"]["Schedule"]["Properties"]["Schedule"] =
            "rate(1 minute)".into()
    });
    assert!(e.contains("QuotaSyncSchedule"), "{e}");
    let e = broken(|d| {
        d["Resources"]["QuotaSyncFunction"]["Properties"]["Environment"]["Variables"]["WORKFLOW_TYPE"] =
            "standard".into()
    });
    assert!(e.contains("WORKFLOW_TYPE"), "{e}");
    let e = broken(|d| {
        d["Resources"]["QuotaSyncFunction"]["Properties"]["Environment"]["Variables"]["STATE_MACHINE_ARN"] = "x".into()
    });
    assert!(e.contains("not read by the quota sync"), "{e}");
    assert!(check_quota_sync(&edited(|d| {
        remove_key(&mut d["Resources"]["QuotaSyncFunction"], "Condition");
    }))
    .unwrap_err()
    .contains("deployed without QuotaSyncSchedule"));
    let no_rule = edited(|d| {
        remove_key(&mut d["Rules"], "QuotaSync");
    })
    .with("QuotaSyncSchedule", "rate(1 hour)".into())
    .with("CoordinationTable", "None".into());
    assert!(check_quota_sync(&no_rule).unwrap_err().contains("no rule rejects"));
}

#[test]
fn quota_proximity_alarms_watch_consumption_against_the_refill() {
    for t in [
        Template::load(),
        Template::load().with("MessagesPerExecution", 10.into()),
        Template::load()
            .with("MessagesPerExecution", 10.into())
            .with("WorkflowType", "EXPRESS".into()),
        Template::load().with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into()),
    ] {
        check_quota_proximity(&t).unwrap_or_else(|e| panic!("{}: {e}", batch_mode(&t)));
    }
    check_quota_widgets(&Template::load()).unwrap();
}

#[test]
fn quota_proximity_check_rejects_fixed_thresholds_other_math_and_missing_alarms() {
    fn alarm(d: &mut Value) -> &mut Value {
        &mut d["Resources"]["StartExecutionQuotaProximityAlarm"]["Properties"]
    }
    let broken = |edit: fn(&mut Value)| check_quota_proximity(&edited(edit)).unwrap_err();
    assert!(broken(|d| alarm(d)["Threshold"] = 80.into()).contains("QuotaProximityPercent"));
    assert!(broken(|d| alarm(d)["EvaluationPeriods"] = 1.into()).contains("QuotaProximityPercent"));
    assert!(broken(|d| alarm(d)["Metrics"][2]["Expression"] = "consumed".into()).contains("alone"));
    assert!(broken(|d| alarm(d)["Metrics"][1]["MetricStat"]["Period"] = 300.into()).contains("1-minute"));
    assert!(broken(
        |d| alarm(d)["AlarmDescription"] = "sfn-pacer: StartExecution is close to its quota, do something".into()
    )
    .contains("docs/deploy.md"));
    let without_transitions = edited(|d| {
        remove_key(&mut d["Resources"], "StateTransitionQuotaProximityAlarm");
    })
    .with("MessagesPerExecution", 10.into());
    assert!(check_quota_proximity(&without_transitions)
        .unwrap_err()
        .contains("StateTransition"));
    let always = edited(|d| {
        remove_key(&mut d["Resources"]["StateTransitionQuotaProximityAlarm"], "Condition");
    });
    assert!(check_quota_proximity(&always).unwrap_err().contains("expected 1"));
    let widgets = edited(|d| {
        let body = d["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0]
            .as_str()
            .unwrap();
        d["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"][0] =
            body.replace("\"QuotaRate\"", "\"QuotaBurst\"").into();
    });
    assert!(check_quota_widgets(&widgets).unwrap_err().contains("QuotaRate"));
}

#[test]
fn the_function_is_told_the_queues_retention() {
    check_retention(&Template::load()).unwrap();
    check_retention(&Template::load().with("QueueRetentionSeconds", 86_400.into())).unwrap();
    let t = edited(|d| d["Resources"]["DeadLetterQueue"]["Properties"]["MessageRetentionPeriod"] = 604_800.into());
    assert!(check_retention(&t).unwrap_err().contains("DLQ_RETENTION_SECONDS"));
    let t = edited(|d| {
        remove_key(
            &mut d["Resources"]["StarterFunction"]["Properties"]["Environment"]["Variables"],
            "QUEUE_RETENTION_SECONDS",
        );
    });
    assert!(check_retention(&t)
        .unwrap_err()
        .contains("QUEUE_RETENTION_SECONDS is not set"));
}

// ---------------------------------------------------------------- the shared budget at scale (issue 17)

/// The function may describe the state machine it starts, and only that one: at init it
/// checks WORKFLOW_TYPE against the state machine's type.
fn check_describe_state_machine(t: &Template) -> Result<(), String> {
    let (statements, _) = function_policies(t)?;
    let resource = |action: &str| -> Result<Value, String> {
        let found: Vec<&Value> = statements.iter().filter(|s| s["Action"] == action).collect();
        match found.as_slice() {
            [statement] => Ok(statement["Resource"].clone()),
            other => Err(format!("{} statements allow {action} alone, not one", other.len())),
        }
    };
    let (starts, describes) = (
        resource("states:StartExecution")?,
        resource("states:DescribeStateMachine")?,
    );
    if describes != starts {
        return Err(format!(
            "DescribeStateMachine on {describes}, not on the state machine started ({starts})"
        ));
    }
    Ok(())
}

/// Coordinated, one alarm on the share of leased slots dropped (LeaseSlotsDropped against
/// Executions, the function's own metrics) that notifies the topic and says where to look.
fn check_lease_slots_dropped_alarm(t: &Template) -> Result<(), String> {
    let (function, _) = t.starter()?;
    let dimensions = serde_json::json!([{"Name": "FunctionName", "Value": {"Ref": function}}]);
    let alarms = t.deployed_of_type("AWS::CloudWatch::Alarm")?;
    let on_dropped: Vec<_> = alarms
        .iter()
        .filter(|(_, a)| alarm_metrics(a).iter().any(|m| m["MetricName"] == "LeaseSlotsDropped"))
        .collect();
    let coordinated = t.condition("UseCoordination")?;
    let [(name, alarm)] = on_dropped.as_slice() else {
        return match (coordinated, on_dropped.len()) {
            (false, 0) => Ok(()),
            (_, n) => Err(format!(
                "expected {} alarm on LeaseSlotsDropped, found {n}",
                u8::from(coordinated)
            )),
        };
    };
    let metrics = alarm_metrics(alarm);
    for wanted in ["LeaseSlotsDropped", "Executions"] {
        let metric = metrics
            .iter()
            .find(|m| m["MetricName"] == wanted)
            .ok_or_else(|| format!("alarm {name} does not read {wanted}"))?;
        if metric["Namespace"] != serde_json::json!({"Ref": "MetricsNamespace"}) || metric["Dimensions"] != dimensions {
            return Err(format!("alarm {name} reads {wanted} of another namespace or function"));
        }
    }
    let props = &alarm["Properties"];
    let expression = match returned_series(props).as_slice() {
        [one] => one["Expression"].as_str().unwrap_or_default(),
        other => return Err(format!("alarm {name} returns {} series, not one share", other.len())),
    };
    let ids: Vec<String> = metrics.iter().map(|m| text(&m["Id"])).collect();
    if !ids.iter().all(|id| !id.is_empty() && expression.contains(id.as_str())) || !expression.contains('/') {
        return Err(format!(
            "alarm {name} expression {expression:?} is not the share of {ids:?}"
        ));
    }
    let threshold = t.number(&props["Threshold"])?;
    if props["ComparisonOperator"] != "GreaterThanThreshold" || !(0.0..=10.0).contains(&threshold) {
        return Err(format!("alarm {name} fires above {threshold} %, not a few percent"));
    }
    let mut description = Vec::new();
    strings(&props["AlarmDescription"], &mut description);
    if !description.concat().contains("LeaseLatency") {
        return Err(format!("alarm {name} does not say to look at LeaseLatency"));
    }
    check_notifies(t, name, props)
}

#[test]
fn the_function_may_describe_only_the_state_machine_it_starts() {
    for t in batch_modes().into_iter().chain(coordination_modes()) {
        check_describe_state_machine(&t).unwrap();
    }
}

#[test]
fn describe_check_rejects_a_missing_or_wider_statement() {
    let describe = |d: &mut Value| -> usize {
        let statements = starter_statements(d).as_array().unwrap();
        statements
            .iter()
            .position(|s| s["Sid"] == "DescribeStateMachine")
            .unwrap()
    };
    let t = edited(|d| {
        let i = describe(d);
        starter_statements(d).as_array_mut().unwrap().remove(i);
    });
    assert!(check_describe_state_machine(&t).is_err());
    let t = edited(|d| {
        let i = describe(d);
        starter_statements(d)[i]["Resource"] = serde_json::json!({"Fn::Sub": "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:stateMachine:other"});
    });
    assert!(check_describe_state_machine(&t).is_err());
}

#[test]
fn lease_slots_dropped_alarm_exists_when_coordinated() {
    for t in coordination_modes() {
        check_lease_slots_dropped_alarm(&t).unwrap();
        check_lease_slots_dropped_alarm(&t.with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into()))
            .unwrap();
    }
    check_dashboard_metrics(&Template::load(), &["LeaseSlotsDropped", "LeaseLatency"]).unwrap();
}

#[test]
fn lease_slots_dropped_alarm_check_rejects_a_missing_wrong_or_silent_alarm() {
    let alarm = "LeaseSlotsDroppedAlarm";
    let t = edited(|d| {
        remove_key(&mut d["Resources"], alarm);
    });
    assert!(check_lease_slots_dropped_alarm(&t).is_err());
    let t = edited(|d| {
        d["Resources"][alarm]["Properties"]["Metrics"][1]["MetricStat"]["Metric"]["Namespace"] = "Other".into()
    });
    assert!(check_lease_slots_dropped_alarm(&t).is_err());
    let t = edited(|d| d["Resources"][alarm]["Properties"]["Threshold"] = 50.into());
    assert!(check_lease_slots_dropped_alarm(&t).is_err());
    let t = edited(|d| d["Resources"][alarm]["Properties"]["Metrics"][0]["Expression"] = "dropped".into());
    assert!(check_lease_slots_dropped_alarm(&t).is_err());
    let t = edited(|d| {
        remove_key(&mut d["Resources"][alarm]["Properties"], "AlarmActions");
    })
    .with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into());
    assert!(check_lease_slots_dropped_alarm(&t).is_err());
}

// ------------------------------------------------------- the running executions cap (issue 16)

/// The cap's item actions (its transactions are authorized per action), sorted.
const CAP_ACTIONS: &[&str] = &[
    "dynamodb:BatchGetItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
];
/// DescribeExecution's shared budget (it paces the reclaim).
const DESCRIBE_BUDGET_KEYS: &[&str] = &["quota#describe-execution", "quota#describe-execution#*"];

/// Whether the parameters ask for a cap (a rule rejects one without the coordination table).
fn cap_expected(t: &Template) -> Result<bool, String> {
    let cap = t.number(t.params.get("MaxRunningExecutions").unwrap_or(&Value::from(0)))?;
    Ok(cap > 0.0 && t.params.get("CoordinationTable").map(text).as_deref() != Some("None"))
}

/// The deployed functions of the starter's code other than the starter: the release function.
fn release_functions(t: &Template) -> Result<Vec<(String, Value)>, String> {
    let (starter_id, starter) = t.starter()?;
    Ok(t.deployed_of_type("AWS::Serverless::Function")?
        .into_iter()
        .filter(|(name, f)| name != starter_id && f["Properties"]["CodeUri"] == starter["Properties"]["CodeUri"])
        .collect())
}

/// The release function exists exactly with a cap: the starter's code (same binary), a reserved
/// concurrency of its own, the starter's variables it reads with the starter's values, a rule for
/// this state machine's status changes with a DLQ, the reclaim every minute, and Lambda's failed
/// asynchronous invocations kept.
fn check_release_function(t: &Template) -> Result<(), String> {
    let (_, starter) = t.starter()?;
    let starter = t.evaluate(starter)?.unwrap_or_default();
    let starter_env = &starter["Properties"]["Environment"]["Variables"];
    let releases = release_functions(t)?;
    if !cap_expected(t)? {
        if let Some((name, _)) = releases.first() {
            return Err(format!("{name} is deployed without a cap"));
        }
        if let Some(v) = starter_env.get("MAX_RUNNING_EXECUTIONS") {
            return Err(format!("MAX_RUNNING_EXECUTIONS is {v} without a cap"));
        }
        if t.number(&t.params["MaxRunningExecutions"])? > 0.0 && check_rules(t).is_ok() {
            return Err("no rule rejects MaxRunningExecutions without a coordination table".into());
        }
        return Ok(());
    }
    let [(name, release)] = releases.as_slice() else {
        return Err(format!("expected one release function, found {}", releases.len()));
    };
    let props = &release["Properties"];
    for (variable, parameter) in [
        ("MAX_RUNNING_EXECUTIONS", "MaxRunningExecutions"),
        ("RUNNING_EXPIRY_SECONDS", "RunningExpirySeconds"),
    ] {
        if starter_env[variable] != serde_json::json!({ "Ref": parameter }) {
            return Err(format!("the starter is not told {variable} ({parameter})"));
        }
    }
    if release["Metadata"]["BuildProperties"] != starter["Metadata"]["BuildProperties"] {
        return Err(format!("{name} is not the starter's binary"));
    }
    if props["ReservedConcurrentExecutions"] != serde_json::json!({"Ref": "ReleaseConcurrency"}) {
        return Err(format!(
            "{name} has no reserved concurrency of its own (ReleaseConcurrency)"
        ));
    }
    let env = props["Environment"]["Variables"].as_object().ok_or("no environment")?;
    for (variable, value) in env {
        if starter_env.get(variable) != Some(value) {
            return Err(format!("{name}'s {variable} is not the starter's"));
        }
    }
    for needed in [
        "STATE_MACHINE_ARN",
        "COORDINATION_TABLE",
        "MAX_RUNNING_EXECUTIONS",
        "RUNNING_EXPIRY_SECONDS",
    ] {
        if !env.contains_key(needed) {
            return Err(format!("{name} is not told {needed}"));
        }
    }
    let events: Vec<&Value> = props["Events"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, e)| e)
        .collect();
    let of = |kind: &str| events.iter().filter(|e| e["Type"] == kind).collect::<Vec<_>>();
    let (rules, schedules) = (of("EventBridgeRule"), of("Schedule"));
    let (Some(rule), 1, 1) = (rules.first(), rules.len(), events.len() - 1) else {
        return Err(format!(
            "{name} needs one status change rule and one schedule: {events:?}"
        ));
    };
    let pattern = &rule["Properties"]["Pattern"];
    let machine = &starter_env["STATE_MACHINE_ARN"];
    if pattern["source"] != serde_json::json!(["aws.states"])
        || pattern["detail-type"] != serde_json::json!(["Step Functions Execution Status Change"])
        || pattern["detail"]["stateMachineArn"] != serde_json::json!([machine])
    {
        return Err(format!(
            "{name}'s rule does not match this state machine's status changes: {pattern}"
        ));
    }
    let dlq = &rule["Properties"]["DeadLetterConfig"]["Arn"];
    let on_failure = &props["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"];
    if logical_id(dlq).is_none() || on_failure != dlq {
        return Err(format!(
            "{name}'s rule and failed invocations have no DLQ of this stack"
        ));
    }
    if schedules.first().map(|s| &s["Properties"]["Schedule"]) != Some(&Value::from("rate(1 minute)")) {
        return Err(format!("{name} does not run the reclaim every minute"));
    }
    Ok(())
}

/// The cap's policy: attached to exactly the starter's and the release function's roles; the
/// cap's item actions on the items `running#<key>` and `running#<key>#…` only (the key:
/// `RunningKey`, else the state machine's name), `Query` on the due-index for the key's
/// partitions only, DescribeExecution's budget item, and `states:DescribeExecution` on this state
/// machine's executions only. The release role's own: the DLQ's `SendMessage`, nothing else.
fn check_cap_policy(t: &Template) -> Result<(), String> {
    let policies = t.deployed_of_type("AWS::IAM::ManagedPolicy")?;
    if !cap_expected(t)? {
        return match policies.first() {
            Some((name, _)) => Err(format!("{name} is deployed without a cap")),
            None => Ok(()),
        };
    }
    let [(name, policy)] = policies.as_slice() else {
        return Err(format!("expected one cap policy, found {}", policies.len()));
    };
    let (starter_id, starter) = t.starter()?;
    let releases = release_functions(t)?;
    let (release_id, release) = releases.first().ok_or("no release function")?;
    let role = |f: &Value| serde_json::json!({"Ref": logical_id(&f["Properties"]["Role"]).unwrap_or_default()});
    let props = &policy["Properties"];
    if props["Roles"] != serde_json::json!([role(starter), role(release)]) {
        return Err(format!(
            "{name} is not attached to {starter_id}'s and {release_id}'s roles alone"
        ));
    }
    let machine = t.evaluate(&starter["Properties"])?.unwrap_or_default()["Environment"]["Variables"]
        ["STATE_MACHINE_ARN"]
        .clone();
    let machine_name = serde_json::json!({"Fn::Select": [6, {"Fn::Split": [":", machine]}]});
    let key = match text(t.params.get("RunningKey").unwrap_or(&Value::from(""))).as_str() {
        "" => machine_name.clone(),
        _ => serde_json::json!({"Ref": "RunningKey"}),
    };
    let sub = |pattern: &str| serde_json::json!({"Fn::Sub": [pattern, {"Key": key}]});
    let (table, index) = match text(&t.params["CoordinationTable"]).as_str() {
        "Create" => {
            let id = t
                .deployed_of_type("AWS::DynamoDB::Table")?
                .first()
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            (
                serde_json::json!({"Fn::GetAtt": [id, "Arn"]}),
                Value::from(format!("${{{id}.Arn}}/index/due-index")),
            )
        }
        existing => {
            let arn = format!("arn:${{AWS::Partition}}:dynamodb:${{AWS::Region}}:${{AWS::AccountId}}:table/{existing}");
            (Value::from(arn.clone()), Value::from(format!("{arn}/index/due-index")))
        }
    };
    let statements = props["PolicyDocument"]["Statement"].as_array().ok_or("no statements")?;
    let with_actions = |actions: &[&str]| statements.iter().find(|s| actions_of(s) == actions);
    let items = with_actions(CAP_ACTIONS).ok_or("no statement of the cap's item actions")?;
    check_table_statement_with(
        t,
        "cap items",
        items,
        CAP_ACTIONS,
        &serde_json::json!([sub("running#${Key}"), sub("running#${Key}#*")]),
        &table,
    )?;
    let query = with_actions(&["dynamodb:Query"]).ok_or("no Query statement")?;
    check_table_statement_with(
        t,
        "cap index",
        query,
        &["dynamodb:Query"],
        &serde_json::json!([sub("running#${Key}#due#*")]),
        &index,
    )?;
    let budget = with_actions(COORDINATION_ACTIONS).ok_or("no statement of DescribeExecution's budget")?;
    check_table_statement(
        t,
        "describe budget",
        budget,
        COORDINATION_ACTIONS,
        DESCRIBE_BUDGET_KEYS,
        &table,
    )?;
    let describe = with_actions(&["states:DescribeExecution"]).ok_or("no DescribeExecution statement")?;
    let executions = serde_json::json!({"Fn::Sub": [
        "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${Machine}:*",
        {"Machine": machine_name}
    ]});
    if describe["Resource"] != executions || describe["Effect"] != "Allow" {
        return Err(format!(
            "DescribeExecution is allowed on {}, not this state machine's executions",
            describe["Resource"]
        ));
    }
    if statements.len() != 4 {
        return Err(format!("{name} has {} statements, not the cap's 4", statements.len()));
    }
    let (own, _) = policies_of(t, release)?;
    let dlq = &release["Properties"]["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Destination"];
    match own.as_slice() {
        [only] if actions_of(only) == ["sqs:SendMessage"] && &only["Resource"] == dlq => Ok(()),
        _ => Err(format!(
            "{release_id}'s role allows more than sending to its DLQ: {own:?}"
        )),
    }
}

/// With a cap: an alarm when it has been full (`Running ≥ RunningCap` of the release function,
/// which reads the cap every minute) for `CapFullAlarmMinutes` minutes, and one on any
/// `SlotsReclaimed` (starter's or release function's); each says what to do and notifies.
fn check_cap_alarms(t: &Template) -> Result<(), String> {
    let alarms = t.deployed_of_type("AWS::CloudWatch::Alarm")?;
    let on = |metric: &str| -> Vec<&(String, Value)> {
        alarms
            .iter()
            .filter(|(_, a)| alarm_metrics(a).iter().any(|m| m["MetricName"] == metric))
            .collect()
    };
    let (full, reclaimed) = (on("RunningCap"), on("SlotsReclaimed"));
    if !cap_expected(t)? {
        return match full.len() + reclaimed.len() {
            0 => Ok(()),
            _ => Err("cap alarms without a cap".into()),
        };
    }
    let releases = release_functions(t)?;
    let release = serde_json::json!({"Ref": releases.first().ok_or("no release function")?.0});
    let ([(name, alarm)], [(reclaim_name, reclaim)]) = (full.as_slice(), reclaimed.as_slice()) else {
        return Err(format!(
            "expected one cap-full and one reclaim alarm, found {} and {}",
            full.len(),
            reclaimed.len()
        ));
    };
    let props = &alarm["Properties"];
    let metric = |metric: &str| alarm_metrics(alarm).into_iter().find(|m| m["MetricName"] == metric);
    let dimensions = serde_json::json!([{"Name": "FunctionName", "Value": release}]);
    let (Some(held), Some(cap)) = (metric("Running"), metric("RunningCap")) else {
        return Err(format!("{name} does not compare Running with RunningCap"));
    };
    let expression = format!("IF({} >= {}, 1, 0)", text(&held["Id"]), text(&cap["Id"]));
    let returned: Vec<&Value> = props["Metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["ReturnData"] == true)
        .collect();
    if held["Dimensions"] != dimensions
        || cap["Dimensions"] != dimensions
        || returned.len() != 1
        || returned[0]["Expression"] != expression.as_str()
    {
        return Err(format!(
            "{name} does not alarm on {expression:?} of the release function alone"
        ));
    }
    let minutes = serde_json::json!({"Ref": "CapFullAlarmMinutes"});
    if props["EvaluationPeriods"] != minutes
        || props["DatapointsToAlarm"] != minutes
        || t.number(&props["Threshold"])? != 0.0
    {
        return Err(format!("{name} does not fire after CapFullAlarmMinutes full minutes"));
    }
    let reclaim_metrics = alarm_metrics(reclaim);
    if reclaim_metrics.iter().all(|m| m["Dimensions"] != dimensions)
        || t.number(&reclaim["Properties"]["Threshold"])? != 0.0
    {
        return Err(format!(
            "{reclaim_name} does not fire on any slot the release function reclaims"
        ));
    }
    for (name, alarm) in [(name, alarm), (reclaim_name, reclaim)] {
        let mut description = Vec::new();
        strings(&alarm["Properties"]["AlarmDescription"], &mut description);
        if !description.concat().contains("docs/deploy.md") {
            return Err(format!("{name} does not point to what to do (docs/deploy.md)"));
        }
        check_notifies(t, name, &alarm["Properties"])?;
    }
    Ok(())
}

fn capped() -> Template {
    Template::load().with("MaxRunningExecutions", 50.into())
}

fn cap_modes() -> Vec<Template> {
    vec![
        Template::load(),
        capped(),
        capped().with("RunningKey", "database".into()),
        capped().with("CoordinationTable", "shared".into()),
        capped().with(
            "StateMachineArn",
            "arn:aws:states:us-east-1:123456789012:stateMachine:orders".into(),
        ),
        capped().with("MessagesPerExecution", 10.into()),
        capped().with("AlarmTopicArn", "arn:aws:sns:us-east-1:123456789012:ops".into()),
    ]
}

#[test]
fn the_cap_brings_its_release_function_policy_alarms_and_index_when_asked() {
    for t in cap_modes() {
        let mode = format!(
            "{:?}",
            (
                &t.params["MaxRunningExecutions"],
                &t.params["CoordinationTable"],
                &t.params["RunningKey"]
            )
        );
        for check in [
            check_release_function,
            check_cap_policy,
            check_cap_alarms,
            check_rules,
            check_references,
            check_coordination,
            check_least_privilege,
        ] {
            check(&t).unwrap_or_else(|e| panic!("{mode}: {e}"));
        }
    }
    assert!(check_rules(&capped().with("CoordinationTable", "None".into()))
        .unwrap_err()
        .contains("MaxRunningExecutions above 0 needs coordinated mode"));
    check_dashboard_metrics(
        &capped(),
        &[
            "Running",
            "RunningCap",
            "WaitingForSlot",
            "SlotsReleased",
            "SlotsReclaimed",
            "ReleaseEvents",
            "DuplicateReleaseEvents",
        ],
    )
    .unwrap();
}

fn release_props(d: &mut Value) -> &mut Value {
    &mut d["Resources"]["ReleaseFunction"]["Properties"]
}

fn cap_statement<'a>(d: &'a mut Value, sid: &str) -> &'a mut Value {
    statement_mut(
        &mut d["Resources"]["RunningCapPolicy"]["Properties"]["PolicyDocument"]["Statement"],
        sid,
    )
}

#[test]
fn cap_checks_reject_shared_concurrency_other_events_wider_privilege_and_silent_alarms() {
    let broken = |edit: fn(&mut Value)| -> String {
        let t = edited(edit).with("MaxRunningExecutions", 50.into());
        [
            check_release_function,
            check_cap_policy,
            check_cap_alarms,
            check_coordination,
        ]
        .iter()
        .find_map(|check| check(&t).err())
        .unwrap_or_else(|| "passed".into())
    };
    type Case = (fn(&mut Value), &'static str);
    let cases: Vec<Case> = vec![
        (
            |d| release_props(d)["ReservedConcurrentExecutions"] = serde_json::json!({"Ref": "MaxConcurrency"}),
            "reserved concurrency",
        ),
        (
            |d| release_props(d)["Environment"]["Variables"]["RUNNING_KEY"] = "other".into(),
            "RUNNING_KEY is not the starter's",
        ),
        (
            |d| {
                remove_key(
                    &mut release_props(d)["Environment"]["Variables"],
                    "RUNNING_EXPIRY_SECONDS",
                )
            },
            "is not told RUNNING_EXPIRY_SECONDS",
        ),
        (
            |d| {
                let starter = &mut d["Resources"]["StarterFunction"]["Properties"];
                starter["Environment"]["Variables"]["RUNNING_EXPIRY_SECONDS"] = 300.into();
            },
            "the starter is not told RUNNING_EXPIRY_SECONDS (RunningExpirySeconds)",
        ),
        (
            |d| {
                release_props(d)["Events"]["StatusChange"]["Properties"]["Pattern"]["detail"]["stateMachineArn"] =
                    serde_json::json!(["arn:aws:states:us-east-1:123456789012:stateMachine:other"])
            },
            "this state machine",
        ),
        (
            |d| {
                remove_key(
                    &mut release_props(d)["Events"]["StatusChange"]["Properties"],
                    "DeadLetterConfig",
                );
            },
            "DLQ",
        ),
        (
            |d| {
                remove_key(&mut release_props(d)["Events"], "Reclaim");
            },
            "one schedule",
        ),
        (
            |d| {
                cap_statement(d, "RunningCapItems")["Action"]
                    .as_array_mut()
                    .unwrap()
                    .push("dynamodb:Scan".into())
            },
            "cap's item actions",
        ),
        (
            |d| {
                cap_statement(d, "RunningCapItems")["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] =
                    serde_json::json!(["running#*"])
            },
            "condition",
        ),
        (
            |d| {
                cap_statement(d, "RunningCapIndex")["Resource"] =
                    serde_json::json!({"Fn::GetAtt": ["CoordinationStore", "Arn"]})
            },
            "Resource",
        ),
        (
            |d| cap_statement(d, "DescribeExecutions")["Resource"] = "*".into(),
            "this state machine's executions",
        ),
        (
            |d| d["Resources"]["RunningCapPolicy"]["Properties"]["Roles"] = serde_json::json!([{"Ref": "StarterRole"}]),
            "attached",
        ),
        (
            |d| {
                d["Resources"]["ReleaseRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"][0]["Action"] =
                    "sqs:*".into()
            },
            "more than sending",
        ),
        (
            |d| d["Resources"]["CapFullAlarm"]["Properties"]["EvaluationPeriods"] = 1.into(),
            "CapFullAlarmMinutes",
        ),
        (
            |d| d["Resources"]["CapFullAlarm"]["Properties"]["Metrics"][2]["Expression"] = "held".into(),
            "alone",
        ),
        (
            |d| {
                remove_key(&mut d["Resources"], "SlotsReclaimedAlarm");
            },
            "expected one cap-full and one reclaim alarm",
        ),
        (
            |d| {
                remove_key(
                    &mut d["Resources"]["CoordinationStore"]["Properties"],
                    "GlobalSecondaryIndexes",
                );
            },
            "due-index",
        ),
    ];
    for (edit, expected) in cases {
        let e = broken(edit);
        assert!(e.contains(expected), "{expected:?} not in {e:?}");
    }
    // Deployed whatever the parameters say.
    let t = edited(|d| {
        remove_key(&mut d["Resources"]["ReleaseFunction"], "Condition");
    });
    assert!(check_release_function(&t).unwrap_err().contains("without a cap"));
    // No rule for the cap without a table.
    let t = edited(|d| {
        remove_key(&mut d["Rules"], "RunningCap");
    })
    .with("MaxRunningExecutions", 50.into())
    .with("CoordinationTable", "None".into());
    assert!(check_release_function(&t).unwrap_err().contains("no rule rejects"));
}
