//! The routing domain's configuration: backends (the Azure resources and their APIs) and
//! models (the names callers use), as written and validated. `config` calls these with the
//! credentials already validated, so a backend can name one.

use crate::config::error::{
    check_bytes, check_host, check_name, check_range, is_header_name, is_name_byte,
    is_safe_path_byte, ConfigError,
};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

const DEFAULT_FOUNDRY_API_VERSION: &str = "2024-05-01-preview";
const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawBackend {
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Azure OpenAI, dated API: /openai/deployments/{deployment}/{op}?api-version="
        )
    )]
    AzureOpenai {
        host: String,
        api_version: String,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Azure OpenAI v1 API: /openai/v1/{op}, deployment in the body's model."
        )
    )]
    AzureOpenaiV1 {
        host: String,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Foundry model inference: /models/{op}?api-version=, deployment in the \
                           body's model."
        )
    )]
    FoundryModels {
        host: String,
        #[serde(default)]
        api_version: Option<String>,
        credential: String,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Claude on Foundry: /anthropic/v1/messages, deployment in the body's model."
        )
    )]
    FoundryAnthropic {
        host: String,
        credential: String,
        #[serde(default)]
        anthropic_version: Option<String>,
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(
    feature = "schema",
    schemars(extend("oneOf" = [
        {"required": ["backend", "deployment"], "not": {"required": ["targets"]}},
        {"required": ["targets"], "not": {"anyOf": [{"required": ["backend"]}, {"required": ["deployment"]}]}}
    ]))
)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    #[cfg_attr(
        feature = "schema",
        schemars(description = "The backend serving the model (or `targets` for a pool).")
    )]
    #[serde(default)]
    backend: Option<String>,
    #[cfg_attr(
        feature = "schema",
        schemars(pattern(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"))
    )]
    #[serde(default)]
    deployment: Option<String>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "A failover pool instead of backend + deployment: targets tried in \
                           priority order within one caller request (README \"Failover between \
                           Azure resources\").",
            length(min = 1, max = 8)
        )
    )]
    #[serde(default)]
    targets: Option<Vec<RawTarget>>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    version: Option<String>,
}

/// One target of a model's failover pool.
#[derive(Debug, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    backend: String,
    #[cfg_attr(
        feature = "schema",
        schemars(pattern(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$"))
    )]
    deployment: String,
    #[cfg_attr(
        feature = "schema",
        schemars(description = "Lower is tried first (default: the position in the list).")
    )]
    #[serde(default)]
    priority: Option<u32>,
    #[cfg_attr(
        feature = "schema",
        schemars(
            description = "Share of the requests that start at this target among the open \
                           targets of its priority (default 1).",
            range(min = 1, max = 1000)
        )
    )]
    #[serde(default)]
    weight: Option<u32>,
}

/// Most targets a pool may have (each is one more attempt at most).
pub const MAX_TARGETS: usize = 8;

/// How the filter finds the model of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum RoutingMode {
    /// Read `model` from the JSON body (needs `allow_on_headers_stop_iteration: true`).
    Body,
    /// Use only the path (`/openai/deployments/{name}/...`, `/deployments/{name}/...`) or the
    /// model header; never pause for the body (works under Istio's WasmPlugin).
    Header,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// Azure OpenAI dated API: `/openai/deployments/{deployment}/...?api-version=`.
    AzureOpenai { api_version: String },
    /// Azure OpenAI v1 API: `/openai/v1/...`, deployment in the body's `model`.
    AzureOpenaiV1,
    /// Foundry model inference: `/models/...?api-version=`, deployment in the body's `model`.
    FoundryModels { api_version: String },
    /// Claude on Foundry: `/anthropic/v1/messages`, deployment in the body's `model`.
    FoundryAnthropic { anthropic_version: String },
}

impl BackendKind {
    /// The `model.format` Foundry's gateway connections read from `/deployments`.
    pub fn model_format(&self) -> &'static str {
        match self {
            BackendKind::FoundryAnthropic { .. } => "Anthropic",
            BackendKind::FoundryModels { .. } => "NonOpenAI",
            _ => "OpenAI",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub kind: BackendKind,
    pub host: String,
    /// Index into `Config::credentials`.
    pub credential: usize,
    /// Extra request headers for this backend (e.g. `extra-parameters: pass-through`).
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRoute {
    /// The model's configured name (an alias resolves to it).
    pub name: String,
    /// Index into `Config::backends` of the first target.
    pub backend: usize,
    /// The first target's deployment.
    pub deployment: String,
    /// Every target in the order they are tried (one for a model without a pool; the first is
    /// `backend` + `deployment`).
    pub targets: Vec<Target>,
}

impl ModelRoute {
    /// A model served by more than one target.
    pub fn is_pool(&self) -> bool {
        self.targets.len() > 1
    }

    /// Some targets share a priority, so requests are spread among them by weight.
    pub fn has_weights(&self) -> bool {
        self.targets
            .windows(2)
            .any(|w| w.first().map(|t| t.priority) == w.get(1).map(|t| t.priority))
    }
}

/// A backend and the deployment a model has on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Index into `Config::backends`.
    pub backend: usize,
    pub deployment: String,
    /// Lower is tried first; targets of equal priority share the requests by `weight`.
    pub priority: u32,
    pub weight: u32,
}

/// A model as discovery endpoints list it (aliases are not listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub model_name: String,
    pub version: String,
    pub backend: usize,
}

/// Validates one backend. `credential_index`: the index of a validated credential by name
/// (backends name their credential; credentials are validated first).
pub fn validate_backend(
    name: String,
    backend: RawBackend,
    credential_index: impl Fn(&str) -> Option<usize>,
) -> Result<Backend, ConfigError> {
    let field = format!("backends.{name}");
    check_name(&field, &name)?;
    let (host, credential, headers, kind) = match backend {
        RawBackend::AzureOpenai {
            host,
            api_version,
            credential,
            headers,
        } => {
            check_api_version(&format!("{field}.api_version"), &api_version)?;
            (
                host,
                credential,
                headers,
                BackendKind::AzureOpenai { api_version },
            )
        }
        RawBackend::AzureOpenaiV1 {
            host,
            credential,
            headers,
        } => (host, credential, headers, BackendKind::AzureOpenaiV1),
        RawBackend::FoundryModels {
            host,
            api_version,
            credential,
            headers,
        } => {
            let api_version =
                api_version.unwrap_or_else(|| DEFAULT_FOUNDRY_API_VERSION.to_string());
            check_api_version(&format!("{field}.api_version"), &api_version)?;
            (
                host,
                credential,
                headers,
                BackendKind::FoundryModels { api_version },
            )
        }
        RawBackend::FoundryAnthropic {
            host,
            credential,
            anthropic_version,
            headers,
        } => {
            let anthropic_version =
                anthropic_version.unwrap_or_else(|| DEFAULT_ANTHROPIC_VERSION.to_string());
            check_api_version(&format!("{field}.anthropic_version"), &anthropic_version)?;
            (
                host,
                credential,
                headers,
                BackendKind::FoundryAnthropic { anthropic_version },
            )
        }
    };
    check_host(&format!("{field}.host"), &host)?;
    let credential = credential_index(&credential).ok_or_else(|| {
        ConfigError::new(
            format!("{field}.credential"),
            format!("no credential named {credential:?} in credentials"),
        )
    })?;
    let mut extra = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let hfield = format!("{field}.headers.{k}");
        if !is_header_name(&k) || RESERVED_HEADERS.contains(&k.as_str()) {
            return Err(ConfigError::new(
                hfield,
                "must be a lowercase header name other than authorization, api-key, host or the routing header",
            ));
        }
        if v.bytes().any(|b| b < 0x20 || b == 0x7f) {
            return Err(ConfigError::new(
                hfield,
                "header values may not contain control characters",
            ));
        }
        extra.push((k, v));
    }
    Ok(Backend {
        name,
        kind,
        host,
        credential,
        headers: extra,
    })
}

/// Headers a backend's `headers` may not set: the filter owns them.
const RESERVED_HEADERS: [&str; 6] = [
    "authorization",
    "api-key",
    "x-api-key",
    "host",
    "content-length",
    "transfer-encoding",
];

/// Validates the models against the validated backends: every name and alias a caller may
/// use, and the list discovery endpoints show.
pub fn validate_models(
    raw: BTreeMap<String, RawModel>,
    backends: &[Backend],
) -> Result<(HashMap<String, ModelRoute>, Vec<ModelInfo>), ConfigError> {
    let mut models = HashMap::with_capacity(raw.len());
    let mut model_list = Vec::with_capacity(raw.len());
    for (name, model) in raw {
        let field = format!("models.{name}");
        check_model_name(&field, &name)?;
        let targets = validate_targets(&field, &model, backends)?;
        let Some(first) = targets.first() else {
            return Err(ConfigError::new(
                format!("{field}.targets"),
                "at least one target is needed",
            ));
        };
        let backend = first.backend;
        let route = ModelRoute {
            name: name.clone(),
            backend,
            deployment: first.deployment.clone(),
            targets: targets.clone(),
        };
        for (i, alias) in model.aliases.iter().enumerate() {
            check_model_name(&format!("{field}.aliases[{i}]"), alias)?;
        }
        for caller_name in std::iter::once(&name).chain(model.aliases.iter()) {
            if models.insert(caller_name.clone(), route.clone()).is_some() {
                return Err(ConfigError::new(
                    field.clone(),
                    format!("the name {caller_name:?} is used by more than one model or alias"),
                ));
            }
        }
        model_list.push(ModelInfo {
            model_name: model.model_name.unwrap_or_else(|| name.clone()),
            version: model.version.unwrap_or_default(),
            name,
            backend,
        });
    }
    if models.is_empty() {
        return Err(ConfigError::new("models", "at least one model is needed"));
    }
    Ok((models, model_list))
}

/// A model's targets: `backend` + `deployment`, or `targets` (a pool: sorted by priority,
/// each backend once, one API family, at most [`MAX_TARGETS`]).
fn validate_targets(
    field: &str,
    model: &RawModel,
    backends: &[Backend],
) -> Result<Vec<Target>, ConfigError> {
    let backend_index = |field: String, name: &str| {
        backends.iter().position(|b| b.name == name).ok_or_else(|| {
            ConfigError::new(field, format!("no backend named {name:?} in backends"))
        })
    };
    let Some(raw_targets) = &model.targets else {
        let (Some(backend), Some(deployment)) = (&model.backend, &model.deployment) else {
            let missing = if model.backend.is_none() {
                "backend"
            } else {
                "deployment"
            };
            return Err(ConfigError::new(
                format!("{field}.{missing}"),
                "a model needs backend and deployment, or targets",
            ));
        };
        let backend = backend_index(format!("{field}.backend"), backend)?;
        check_deployment(&format!("{field}.deployment"), deployment)?;
        return Ok(vec![Target {
            backend,
            deployment: deployment.clone(),
            priority: 0,
            weight: 1,
        }]);
    };
    if model.backend.is_some() || model.deployment.is_some() {
        let both = if model.backend.is_some() {
            "backend"
        } else {
            "deployment"
        };
        return Err(ConfigError::new(
            format!("{field}.{both}"),
            "a model has either backend and deployment, or targets (each with its own deployment)",
        ));
    }
    if raw_targets.is_empty() || raw_targets.len() > MAX_TARGETS {
        return Err(ConfigError::new(
            format!("{field}.targets"),
            format!("a pool has 1 to {MAX_TARGETS} targets"),
        ));
    }
    let mut ordered: Vec<Target> = Vec::with_capacity(raw_targets.len());
    for (i, t) in raw_targets.iter().enumerate() {
        let tfield = format!("{field}.targets[{i}]");
        let backend = backend_index(format!("{tfield}.backend"), &t.backend)?;
        check_deployment(&format!("{tfield}.deployment"), &t.deployment)?;
        if ordered.iter().any(|o| o.backend == backend) {
            return Err(ConfigError::new(
                format!("{tfield}.backend"),
                format!(
                    "backend {:?} is already a target of this model (one target per backend: a \
                     retry picks the next cluster)",
                    t.backend
                ),
            ));
        }
        if let Some(first) = ordered.first() {
            let family = |b: usize| backends.get(b).map(|b| api_family(&b.kind));
            if family(first.backend) != family(backend) {
                return Err(ConfigError::new(
                    format!("{tfield}.backend"),
                    "the targets of a pool must serve the same APIs: all Azure OpenAI \
                     (azure_openai, azure_openai_v1), all foundry_models or all \
                     foundry_anthropic, so that a caller's request fits every target",
                ));
            }
        }
        let priority = t.priority.unwrap_or(u32::try_from(i).unwrap_or(u32::MAX));
        let weight = t.weight.unwrap_or(1);
        check_range(&format!("{tfield}.weight"), u64::from(weight), 1, 1000)?;
        ordered.push(Target {
            backend,
            deployment: t.deployment.clone(),
            priority,
            weight,
        });
    }
    // Stable: equal priorities keep their order in the list.
    ordered.sort_by_key(|t| t.priority);
    Ok(ordered)
}

/// Backends serving the same operations can be targets of one pool (Azure OpenAI's dated and
/// v1 APIs serve the same ones; Foundry model inference fewer; Claude only Messages).
fn api_family(kind: &BackendKind) -> u8 {
    match kind {
        BackendKind::AzureOpenai { .. } | BackendKind::AzureOpenaiV1 => 0,
        BackendKind::FoundryModels { .. } => 1,
        BackendKind::FoundryAnthropic { .. } => 2,
    }
}

fn check_api_version(field: &str, v: &str) -> Result<(), ConfigError> {
    check_bytes(
        field,
        v,
        64,
        is_safe_path_byte,
        "must be a non-empty version such as 2024-10-21",
    )
}

/// Model names reach paths and error messages: letters, digits and a few separators only.
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(is_safe_path_byte)
        && !name.starts_with('.')
}

fn check_model_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if !is_valid_model_name(name) {
        return Err(ConfigError::new(
            field,
            "model names may use letters, digits, '.', '_', '-' and ':' (1-128 characters, not starting with '.')",
        ));
    }
    Ok(())
}

/// The deployment goes into the upstream path: allow only what Azure allows in a deployment
/// name, so a config can never produce a path with '/', '..' or '?'.
fn check_deployment(field: &str, deployment: &str) -> Result<(), ConfigError> {
    const REASON: &str = "must be 1-64 characters of letters, digits, '-', '_', '.'";
    check_bytes(field, deployment, 64, is_name_byte, REASON)?;
    if deployment.starts_with('.') {
        return Err(ConfigError::new(field, REASON));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::tests::{base, parse};
    use serde_json::json;

    #[test]
    fn unsafe_deployment_and_model_names_are_refused() {
        for bad in ["../x", "a/b", "a?b", "", ".hidden", "a b", "a%2f"] {
            let mut v = base();
            v["models"]["gpt-4o"]["deployment"] = json!(bad);
            assert_eq!(
                parse(v).unwrap_err().field,
                "models.gpt-4o.deployment",
                "{bad}"
            );
        }
        let mut v = base();
        v["models"] = json!({"a/b": {"backend": "aoai", "deployment": "d"}});
        assert_eq!(parse(v).unwrap_err().field, "models.a/b");
    }

    fn pool() -> serde_json::Value {
        let mut v = base();
        v["backends"]["payg"] = json!({"kind": "azure_openai_v1", "host": "p.openai.azure.com",
                                       "credential": "main"});
        v["backends"]["claude"] = json!({"kind": "foundry_anthropic",
                                         "host": "f.services.ai.azure.com", "credential": "main"});
        v["backends"]["models"] = json!({"kind": "foundry_models",
                                         "host": "m.services.ai.azure.com", "credential": "main"});
        v["models"]["gpt-4o"] = json!({"targets": [
            {"backend": "aoai", "deployment": "gpt-4o-ptu"},
            {"backend": "payg", "deployment": "gpt-4o-global"}
        ], "aliases": ["gpt-4o-latest"]});
        v
    }

    #[test]
    fn a_pool_keeps_its_order_and_a_single_target_is_the_simple_case() {
        let c = parse(pool()).unwrap();
        let m = &c.models["gpt-4o"];
        assert!(m.is_pool());
        let names: Vec<(&str, &str)> = m
            .targets
            .iter()
            .map(|t| (c.backends[t.backend].name.as_str(), t.deployment.as_str()))
            .collect();
        assert_eq!(names, [("aoai", "gpt-4o-ptu"), ("payg", "gpt-4o-global")]);
        assert_eq!(
            (m.backend, m.deployment.as_str()),
            (m.targets[0].backend, "gpt-4o-ptu")
        );
        assert_eq!(c.models["gpt-4o-latest"], *m);

        let c = parse(base()).unwrap();
        let m = &c.models["gpt-4o"];
        assert!(!m.is_pool());
        assert_eq!(m.targets.len(), 1);
        assert_eq!(m.targets[0].deployment, "gpt-4o-prod");
    }

    #[test]
    fn priorities_order_the_targets() {
        let mut v = pool();
        v["models"]["gpt-4o"]["targets"][0]["priority"] = json!(5);
        v["models"]["gpt-4o"]["targets"][1]["priority"] = json!(1);
        let c = parse(v).unwrap();
        let first = &c.models["gpt-4o"].targets[0];
        assert_eq!(c.backends[first.backend].name, "payg");
        assert_eq!((first.priority, first.weight), (1, 1));
    }

    #[test]
    fn weights_within_a_priority() {
        let mut v = pool();
        v["models"]["gpt-4o"]["targets"] = json!([
            {"backend": "payg", "deployment": "gpt-4o-global", "priority": 1},
            {"backend": "aoai", "deployment": "gpt-4o-ptu", "priority": 0, "weight": 3},
            {"backend": "models", "deployment": "x", "priority": 0}
        ]);
        v["models"]["gpt-4o"]["targets"][2]["backend"] = json!("aoai2");
        v["backends"]["aoai2"] = v["backends"]["aoai"].clone();
        let c = parse(v).unwrap();
        let t: Vec<(&str, u32, u32)> = c.models["gpt-4o"]
            .targets
            .iter()
            .map(|t| (c.backends[t.backend].name.as_str(), t.priority, t.weight))
            .collect();
        assert_eq!(t, [("aoai", 0, 3), ("aoai2", 0, 1), ("payg", 1, 1)]);
    }

    #[test]
    fn bad_pools_are_refused_naming_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (json!({"targets": []}), "models.gpt-4o.targets"),
            (
                json!({"backend": "aoai", "targets": [{"backend": "aoai", "deployment": "d"}]}),
                "models.gpt-4o.backend",
            ),
            (
                json!({"deployment": "d", "targets": [{"backend": "aoai", "deployment": "d"}]}),
                "models.gpt-4o.deployment",
            ),
            (json!({"backend": "aoai"}), "models.gpt-4o.deployment"),
            (json!({"deployment": "d"}), "models.gpt-4o.backend"),
            (json!({}), "models.gpt-4o.backend"),
            (
                json!({"targets": [{"backend": "nope", "deployment": "d"}]}),
                "models.gpt-4o.targets[0].backend",
            ),
            (
                json!({"targets": [{"backend": "aoai", "deployment": "../x"}]}),
                "models.gpt-4o.targets[0].deployment",
            ),
            (
                json!({"targets": [{"backend": "aoai", "deployment": "a"},
                                    {"backend": "aoai", "deployment": "b"}]}),
                "models.gpt-4o.targets[1].backend",
            ),
            (
                json!({"targets": [{"backend": "aoai", "deployment": "a"},
                                    {"backend": "claude", "deployment": "b"}]}),
                "models.gpt-4o.targets[1].backend",
            ),
            (
                json!({"targets": [{"backend": "aoai", "deployment": "a"},
                                    {"backend": "models", "deployment": "b"}]}),
                "models.gpt-4o.targets[1].backend",
            ),
            (
                json!({"targets": [{"backend": "aoai", "deployment": "a", "weight": 0}]}),
                "models.gpt-4o.targets[0].weight",
            ),
            (
                json!({"targets": [{"backend": "aoai", "deployment": "a", "weight": 1001}]}),
                "models.gpt-4o.targets[0].weight",
            ),
            (
                json!({"targets": [{"backend": "aoai", "deployment": "a", "share": 2}]}),
                "models.gpt-4o.targets[0]",
            ),
        ];
        for (model, field) in cases {
            let mut v = pool();
            v["models"]["gpt-4o"] = model.clone();
            let e = parse(v).unwrap_err();
            assert!(e.field.starts_with(field), "{model}: {} ({e})", e.field);
        }
        let mut v = pool();
        v["models"]["gpt-4o"]["targets"] = json!((0..9)
            .map(|i| json!({"backend": "aoai", "deployment": format!("d{i}")}))
            .collect::<Vec<_>>());
        assert_eq!(parse(v).unwrap_err().field, "models.gpt-4o.targets");
    }

    #[test]
    fn failover_policy_and_role() {
        use crate::failover::{FailoverPolicy, Role};
        let c = parse(pool()).unwrap();
        assert_eq!(c.role, Role::Downstream);
        assert_eq!(c.failover, FailoverPolicy::default());
        let mut v = pool();
        v["role"] = json!("upstream");
        v["failover"] = json!({"eject_after_failures": 0, "eject_for_ms": 5000});
        let c = parse(v).unwrap();
        assert_eq!(c.role, Role::Upstream);
        assert_eq!(c.failover.eject_after_failures, 0);
        assert_eq!(c.failover.eject_for_ms, 5000);
        for (bad, field) in [
            (json!({"eject_for_ms": 0}), "failover.eject_for_ms"),
            (
                json!({"max_retry_after_ms": 0}),
                "failover.max_retry_after_ms",
            ),
            (
                json!({"eject_after_failures": 5000}),
                "failover.eject_after_failures",
            ),
            (json!({"retry_after": 1}), "failover"),
        ] {
            let mut v = pool();
            v["failover"] = bad;
            assert!(parse(v).unwrap_err().field.starts_with(field), "{field}");
        }
        let mut v = pool();
        v["role"] = json!("sidecar");
        assert_eq!(parse(v).unwrap_err().field, "role");
    }
}
