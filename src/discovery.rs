//! Model discovery answered by the filter from its config: `GET /v1/models` (OpenAI format)
//! and `GET /deployments[/{name}]` (the AzureOpenAI format Foundry Agent Service's gateway
//! connections read; ../shared/AZURE-WIRE.md section 5).

use crate::config::Config;
use crate::errors::FilterError;
use crate::routing::config::ModelInfo;
use serde_json::{json, Value};

pub fn list_models(config: &Config) -> String {
    let data: Vec<Value> = config
        .model_list
        .iter()
        .map(|m| json!({"id": m.name, "object": "model", "created": 0, "owned_by": owner(config, m)}))
        .collect();
    json!({"object": "list", "data": data}).to_string()
}

/// `GET /v1/models/{id}` (`client.models.retrieve`): the model as `list_models` lists it; an
/// alias answers under the name asked for, so a caller's round trip keeps its own name.
pub fn get_model(config: &Config, id: &str) -> Result<String, FilterError> {
    let found = config
        .models
        .get(id)
        .and_then(|route| config.model_list.iter().find(|m| m.name == route.name));
    match found {
        Some(m) => Ok(
            json!({"id": id, "object": "model", "created": 0, "owned_by": owner(config, m)})
                .to_string(),
        ),
        None => Err(FilterError::not_found(
            "model_not_found",
            format!(
                "The model `{}` does not exist or you do not have access to it.",
                id.chars()
                    .filter(|c| !c.is_control())
                    .take(100)
                    .collect::<String>()
            ),
        )),
    }
}

pub fn list_deployments(config: &Config) -> String {
    let value: Vec<Value> = config
        .model_list
        .iter()
        .map(|m| deployment(config, m))
        .collect();
    json!({ "value": value }).to_string()
}

pub fn get_deployment(config: &Config, name: &str) -> Result<String, FilterError> {
    config
        .model_list
        .iter()
        .find(|m| m.name == name)
        .map(|m| deployment(config, m).to_string())
        .ok_or_else(|| {
            FilterError::not_found(
                "DeploymentNotFound",
                "The API deployment for this resource does not exist.",
            )
        })
}

fn deployment(config: &Config, m: &ModelInfo) -> Value {
    let format = config
        .backends
        .get(m.backend)
        .map_or("OpenAI", |b| b.kind.model_format());
    json!({
        "name": m.name,
        "properties": {"model": {"format": format, "name": m.model_name, "version": m.version}}
    })
}

fn owner(config: &Config, m: &ModelInfo) -> &'static str {
    match config
        .backends
        .get(m.backend)
        .map(|b| b.kind.model_format())
    {
        Some("Anthropic") => "anthropic",
        _ => "azure",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let v = json!({
            "credentials": {"main": {"kind": "client_secret", "tenant_id": "t", "client_id": "c",
                                     "client_secret": "s", "token_cluster": "entra"}},
            "backends": {
                "aoai": {"kind": "azure_openai", "host": "r.openai.azure.com", "api_version": "2024-10-21", "credential": "main"},
                "claude": {"kind": "foundry_anthropic", "host": "f.services.ai.azure.com", "credential": "main"}
            },
            "models": {
                "gpt-4o": {"backend": "aoai", "deployment": "gpt-4o-prod", "aliases": ["gpt4o"], "version": "2024-11-20"},
                "claude-opus-4-5": {"backend": "claude", "deployment": "claude-opus-4-5"}
            }
        });
        Config::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn models_list_openai_format_without_aliases() {
        let v: Value = serde_json::from_str(&list_models(&config())).unwrap();
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["claude-opus-4-5", "gpt-4o"]);
    }

    #[test]
    fn model_retrieve_by_name_or_alias() {
        let c = config();
        let v: Value = serde_json::from_str(&get_model(&c, "gpt-4o").unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"id": "gpt-4o", "object": "model", "created": 0, "owned_by": "azure"})
        );
        let v: Value = serde_json::from_str(&get_model(&c, "gpt4o").unwrap()).unwrap();
        assert_eq!(v["id"], "gpt4o");
        let v: Value = serde_json::from_str(&get_model(&c, "claude-opus-4-5").unwrap()).unwrap();
        assert_eq!(v["owned_by"], "anthropic");
        let e = get_model(&c, "gpt-4o-prod").unwrap_err();
        assert_eq!((e.status, e.code), (404, "model_not_found"));
    }

    #[test]
    fn deployments_azure_format() {
        let c = config();
        let v: Value = serde_json::from_str(&list_deployments(&c)).unwrap();
        assert_eq!(v["value"][1]["name"], "gpt-4o");
        assert_eq!(v["value"][1]["properties"]["model"]["format"], "OpenAI");
        assert_eq!(
            v["value"][1]["properties"]["model"]["version"],
            "2024-11-20"
        );
        assert_eq!(v["value"][0]["properties"]["model"]["format"], "Anthropic");
        let one: Value = serde_json::from_str(&get_deployment(&c, "gpt-4o").unwrap()).unwrap();
        assert_eq!(one["name"], "gpt-4o");
        assert_eq!(get_deployment(&c, "nope").unwrap_err().status, 404);
    }
}
