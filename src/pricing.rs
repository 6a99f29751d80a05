//! The price table (`pricing` in the plugin configuration) and the cost of an answer.
//!
//! Prices are per million tokens in one currency, as Azure's price list gives them: input,
//! cached input (prompt-cache reads, usually discounted) and output (reasoning tokens are
//! output tokens and are billed as such). They are kept as integers, micro-units of the
//! currency per million tokens, so that `tokens * price` is an exact count of pico-units
//! (1e-12 of the currency): no float ever takes part in the arithmetic, and the cost counter
//! (micro-units) carries what is below a micro-unit to the next answer instead of rounding it
//! away.
//!
//! ```json
//! "pricing": {
//!   "currency": "USD",
//!   "models": {
//!     "gpt-4o": { "input": 2.5, "cached_input": 1.25, "output": 10 }
//!   }
//! }
//! ```

use crate::config::error::ConfigError;
use crate::usage::Usage;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

/// Micro-units in one unit of the currency.
const MICROS: u64 = 1_000_000;
/// Highest price accepted, per million tokens (far above any real one; keeps the arithmetic
/// far from overflow).
const MAX_PRICE_UNITS: u64 = 1_000_000;

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawPricing {
    /// ISO 4217 code of the prices (three capital letters). Default `USD`.
    #[serde(default)]
    pub currency: Option<String>,
    /// Prices by model name (the names of `models`; aliases are priced as their model).
    #[serde(default)]
    pub models: BTreeMap<String, RawPrice>,
}

/// Prices per million tokens, in the table's currency, with at most six decimals.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    /// Input tokens read from the prompt cache. Default: the `input` price.
    #[serde(default)]
    pub cached_input: Option<f64>,
    pub output: f64,
}

/// A model's prices in micro-units of the currency per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    pub input: u64,
    pub cached_input: u64,
    pub output: u64,
}

/// Pico-units (10⁻¹² of the currency) as a decimal amount with six decimals, cut down
/// (`12.345678`): how budgets in money are shown to callers.
pub fn format_pico(pico: u64) -> String {
    let micros = pico / MICROS;
    format!("{}.{:06}", micros / MICROS, micros % MICROS)
}

impl Price {
    /// What `prompt_tokens` of input (priced as uncached: before the answer, nobody knows
    /// what the prompt cache will serve) and `completion_tokens` of output cost, in
    /// pico-units: a request's estimate priced at the model's rates.
    pub fn estimate_pico(&self, prompt_tokens: u64, completion_tokens: u64) -> u128 {
        u128::from(prompt_tokens) * u128::from(self.input)
            + u128::from(completion_tokens) * u128::from(self.output)
    }

    /// The cost of `usage` in pico-units of the currency (exact).
    pub fn cost_pico(&self, usage: &Usage) -> u128 {
        let cached = usage
            .cached_prompt_tokens
            .unwrap_or(0)
            .min(usage.prompt_tokens);
        let uncached = usage.prompt_tokens - cached;
        u128::from(uncached) * u128::from(self.input)
            + u128::from(cached) * u128::from(self.cached_input)
            + u128::from(usage.completion_tokens) * u128::from(self.output)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pricing {
    pub currency: String,
    prices: HashMap<String, Price>,
}

impl Pricing {
    /// Validates the table; `known_model` tells whether a name is one of `models`. Errors
    /// name the field under `field` (e.g. `pricing`).
    pub fn from_raw(
        raw: &RawPricing,
        field: &str,
        known_model: impl Fn(&str) -> bool,
    ) -> Result<Pricing, ConfigError> {
        let currency = raw.currency.clone().unwrap_or_else(|| "USD".to_string());
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(error(
                format!("{field}.currency"),
                "must be an ISO 4217 code: three capital letters such as `USD` or `EUR`",
            ));
        }
        let mut prices = HashMap::new();
        for (model, raw_price) in &raw.models {
            let at = format!("{field}.models.{model}");
            if !known_model(model) {
                return Err(error(
                    at,
                    "is not a model of `models` (price the model, not an alias)",
                ));
            }
            let input = micros_per_million(raw_price.input, &format!("{at}.input"))?;
            let cached_input = match raw_price.cached_input {
                Some(p) => micros_per_million(p, &format!("{at}.cached_input"))?,
                None => input,
            };
            let output = micros_per_million(raw_price.output, &format!("{at}.output"))?;
            prices.insert(
                model.clone(),
                Price {
                    input,
                    cached_input,
                    output,
                },
            );
        }
        Ok(Pricing { currency, prices })
    }

    /// The prices of a model (by its configured name), if the table has them.
    pub fn price(&self, model: &str) -> Option<&Price> {
        self.prices.get(model)
    }

    pub fn is_empty(&self) -> bool {
        self.prices.is_empty()
    }
}

fn error(field: String, reason: &str) -> ConfigError {
    ConfigError {
        field,
        reason: reason.to_string(),
    }
}

/// A price as an exact integer of micro-units: the number's shortest decimal form (what the
/// config says, `2.5` rather than 2.49999...) read digit by digit.
fn micros_per_million(price: f64, field: &str) -> Result<u64, ConfigError> {
    micros(price, field, MAX_PRICE_UNITS, "per million tokens")
}

/// An amount of the currency (at most six decimals, at most `max_units`, which errors name
/// with `per`) as an exact integer of micro-units, read from its shortest decimal form.
pub fn micros(price: f64, field: &str, max_units: u64, per: &str) -> Result<u64, ConfigError> {
    if !price.is_finite() || price < 0.0 {
        return Err(error(field.to_string(), "must be a number >= 0"));
    }
    let text = format!("{price}");
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    if fraction.len() > 6 {
        return Err(error(
            field.to_string(),
            "has more than six decimals (prices are counted in millionths of the currency)",
        ));
    }
    let units: u64 = whole
        .parse()
        .ok()
        .filter(|u| *u <= max_units)
        .ok_or_else(|| {
            error(
                field.to_string(),
                &format!("must be at most {max_units} {per}"),
            )
        })?;
    let mut micros_text = fraction.to_string();
    while micros_text.len() < 6 {
        micros_text.push('0');
    }
    let micros: u64 = micros_text
        .parse()
        .map_err(|_| error(field.to_string(), "must be a plain decimal number"))?;
    Ok(units * MICROS + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(v: serde_json::Value) -> Result<Pricing, ConfigError> {
        let raw: RawPricing = serde_json::from_value(v).unwrap();
        Pricing::from_raw(&raw, "pricing", |m| m == "gpt-4o" || m == "o3-mini")
    }

    #[test]
    fn prices_are_exact_micro_units() {
        let p = table(serde_json::json!({"models": {
            "gpt-4o": {"input": 2.5, "cached_input": 1.25, "output": 10},
            "o3-mini": {"input": 1.1, "output": 4.4}
        }}))
        .unwrap();
        assert_eq!(p.currency, "USD");
        assert_eq!(
            p.price("gpt-4o"),
            Some(&Price {
                input: 2_500_000,
                cached_input: 1_250_000,
                output: 10_000_000
            })
        );
        // 1.1 is not exact in binary; its decimal form is what counts.
        assert_eq!(p.price("o3-mini").map(|p| p.input), Some(1_100_000));
        assert_eq!(
            p.price("o3-mini").map(|p| p.cached_input),
            Some(1_100_000),
            "cached input defaults to the input price"
        );
        assert_eq!(p.price("unknown"), None);
        let tiny = table(serde_json::json!({"currency": "EUR", "models": {"gpt-4o": {"input": 0.000001, "output": 0.15}}})).unwrap();
        assert_eq!(tiny.currency, "EUR");
        assert_eq!(
            tiny.price("gpt-4o").map(|p| (p.input, p.output)),
            Some((1, 150_000))
        );
    }

    #[test]
    fn cost_is_exact() {
        let price = Price {
            input: 2_500_000,
            cached_input: 1_250_000,
            output: 10_000_000,
        };
        // 1000 input (400 cached), 200 output: 600 * 2.5 + 400 * 1.25 + 200 * 10 micro-units
        // per token... in pico-units.
        let usage = Usage {
            cached_prompt_tokens: Some(400),
            reasoning_tokens: Some(150),
            ..Usage::tokens(1000, 200)
        };
        assert_eq!(
            price.cost_pico(&usage),
            600 * 2_500_000 + 400 * 1_250_000 + 200 * 10_000_000
        );
        // = 0.0040 USD = 4000 micro-units.
        assert_eq!(price.cost_pico(&usage) / 1_000_000, 4000);
        // A million answers of one token at 1.1 per million cost exactly 1.1.
        let one = Usage::tokens(1, 0);
        let p = Price {
            input: 1_100_000,
            cached_input: 1_100_000,
            output: 0,
        };
        let total: u128 = (0..1_000_000).map(|_| p.cost_pico(&one)).sum();
        assert_eq!(total, 1_100_000 * 1_000_000, "1.1 units in pico-units");
        // A cached figure above the prompt (a lying upstream) never underflows.
        let liar = Usage {
            cached_prompt_tokens: Some(10),
            ..Usage::tokens(3, 0)
        };
        assert_eq!(p.cost_pico(&liar), 3 * 1_100_000);
        // The largest usage and price do not overflow.
        let max = Price {
            input: MAX_PRICE_UNITS * MICROS,
            cached_input: MAX_PRICE_UNITS * MICROS,
            output: MAX_PRICE_UNITS * MICROS,
        };
        let _ = max.cost_pico(&Usage::tokens(u64::MAX, u64::MAX));
    }

    #[test]
    fn bad_tables_name_the_field() {
        let cases = [
            (serde_json::json!({"currency": "usd"}), "pricing.currency"),
            (
                serde_json::json!({"models": {"gpt-5": {"input": 1, "output": 1}}}),
                "pricing.models.gpt-5",
            ),
            (
                serde_json::json!({"models": {"gpt-4o": {"input": -1, "output": 1}}}),
                "pricing.models.gpt-4o.input",
            ),
            (
                serde_json::json!({"models": {"gpt-4o": {"input": 1, "output": 0.0000001}}}),
                "pricing.models.gpt-4o.output",
            ),
            (
                serde_json::json!({"models": {"gpt-4o": {"input": 1, "cached_input": 2e6, "output": 1}}}),
                "pricing.models.gpt-4o.cached_input",
            ),
        ];
        for (v, field) in cases {
            let e = table(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e:?}");
        }
        let unknown: Result<RawPricing, _> = serde_json::from_value(
            serde_json::json!({"models": {"gpt-4o": {"input": 1, "output": 1, "cache": 1}}}),
        );
        assert!(unknown.is_err(), "unknown fields are refused");
    }
}
