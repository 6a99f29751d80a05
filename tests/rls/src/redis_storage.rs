//! Limitador counters in Redis: our implementation of the `limitador` crate's
//! `AsyncCounterStorage` trait, so that several RLS replicas (each one a Limitador) share one
//! budget the way limitador-server does with `--storage redis`.
//!
//! Why not Limitador's own `AsyncRedisStorage`: limitador 0.11-0.14 compiles its
//! `redis_storage` feature only together with `disk_storage`, which builds RocksDB from C++
//! (10-20 minutes on the CI machine, and libclang). Limits, CEL conditions and variables, and
//! the check/update rules stay Limitador's; only the counters are kept here. Semantics are
//! Limitador's Redis storage's: a fixed window that starts at a counter's first hit and ends
//! with the key's expiry; `check_and_update` is all or nothing across the counters of one call
//! (one Lua script, atomic in Redis).
//!
//! Keys are readable and stable across processes: `azure-rls:{namespace}:{limit}:{variables}`
//! where `{limit}` lists the limit's id or name, max, window, conditions and variables (sorted)
//! and `{variables}` the counter's resolved variables as JSON. An index hash per namespace
//! (`azure-rls-index:{namespace}`) maps each key to those variables, for `get_counters`.
//!
//! Errors: limitador 0.14 offers no public constructor of its `StorageErr`, so a Redis failure
//! is recorded in the task-local [`REDIS_FAILED`] (set up by the RLS handler around each call)
//! and the handler answers gRPC UNAVAILABLE, as limitador-server does when its storage fails.

use limitador::counter::Counter;
use limitador::limit::{Context, Limit};
use limitador::storage::{AsyncCounterStorage, Authorization, StorageErr};
use redis::aio::MultiplexedConnection;
use redis::Script;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

tokio::task_local! {
    /// Set when a Redis command failed during the current RLS call.
    pub static REDIS_FAILED: Cell<bool>;
}

fn failed(e: redis::RedisError) {
    eprintln!("azure-rls: redis: {e}");
    let _ = REDIS_FAILED.try_with(|f| f.set(true));
}

/// All or nothing: refuse (returning the 1-based index of the first counter over its limit)
/// or add `delta` to every counter, starting a window where a counter is new.
/// KEYS: the counters, then the index. ARGV: delta, then max and window (ms) per counter, then
/// the index entry (JSON) per counter.
const CHECK_AND_UPDATE: &str = r#"
local n = #KEYS - 1
local delta = tonumber(ARGV[1])
for i = 1, n do
  local used = tonumber(redis.call('GET', KEYS[i]) or '0')
  if used + delta > tonumber(ARGV[2 * i]) then return i end
end
for i = 1, n do
  if redis.call('INCRBY', KEYS[i], delta) == delta then
    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i + 1])
    redis.call('HSET', KEYS[n + 1], KEYS[i], ARGV[2 * n + 1 + i])
  end
end
return 0
"#;

/// Adds `delta` to one counter unconditionally. KEYS: counter, index. ARGV: delta, window
/// (ms), index entry.
const UPDATE: &str = r#"
local delta = tonumber(ARGV[1])
if redis.call('INCRBY', KEYS[1], delta) == delta then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('HSET', KEYS[2], KEYS[1], ARGV[3])
end
return 0
"#;

pub struct RedisCounters {
    conn: MultiplexedConnection,
    check_and_update: Script,
    update: Script,
}

impl RedisCounters {
    pub async fn connect(url: &str) -> redis::RedisResult<RedisCounters> {
        let client = redis::Client::open(url)?;
        let conn = client.get_multiplexed_tokio_connection().await?;
        Ok(RedisCounters {
            conn,
            check_and_update: Script::new(CHECK_AND_UPDATE),
            update: Script::new(UPDATE),
        })
    }
}

/// The parts of a limit that make it a distinct limit.
fn limit_identity(limit: &Limit) -> String {
    let mut conditions: Vec<String> = limit.conditions().into_iter().collect();
    conditions.sort();
    let mut variables: Vec<String> = limit.variables().into_iter().collect();
    variables.sort();
    serde_json::json!([
        limit.id().or(limit.name()).unwrap_or(""),
        limit.max_value(),
        limit.seconds(),
        conditions,
        variables
    ])
    .to_string()
}

fn variables_json(vars: &BTreeMap<String, String>) -> String {
    serde_json::to_string(vars).unwrap_or_default()
}

fn counter_key(counter: &Counter) -> String {
    format!(
        "azure-rls:{}:{}:{}",
        counter.namespace().as_ref(),
        limit_identity(counter.limit()),
        variables_json(counter.set_variables())
    )
}

fn index_key(namespace: &str) -> String {
    format!("azure-rls-index:{namespace}")
}

fn window_ms(counter: &Counter) -> u64 {
    counter.window().as_millis().max(1) as u64
}

impl RedisCounters {
    /// Used tokens and time left of one counter's window (0 and None when it has no window).
    async fn read(&self, key: &str) -> redis::RedisResult<(u64, Option<Duration>)> {
        let mut conn = self.conn.clone();
        let (used, pttl): (Option<u64>, i64) = redis::pipe()
            .get(key)
            .cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await?;
        let expires = (pttl > 0).then(|| Duration::from_millis(pttl as u64));
        Ok((used.unwrap_or(0), expires))
    }
}

#[async_trait::async_trait]
impl AsyncCounterStorage for RedisCounters {
    async fn is_within_limits(&self, counter: &Counter, delta: u64) -> Result<bool, StorageErr> {
        match self.read(&counter_key(counter)).await {
            Ok((used, _)) => Ok(used.saturating_add(delta) <= counter.max_value()),
            Err(e) => {
                failed(e);
                Ok(false)
            }
        }
    }

    async fn update_counter(&self, counter: &Counter, delta: u64) -> Result<(), StorageErr> {
        let key = counter_key(counter);
        let mut conn = self.conn.clone();
        let result: redis::RedisResult<i64> = self
            .update
            .key(&key)
            .key(index_key(counter.namespace().as_ref()))
            .arg(delta)
            .arg(window_ms(counter))
            .arg(variables_json(counter.set_variables()))
            .invoke_async(&mut conn)
            .await;
        if let Err(e) = result {
            failed(e);
        }
        Ok(())
    }

    async fn check<'a>(
        &self,
        counters: &mut Vec<Counter>,
        delta: u64,
    ) -> Result<Authorization, StorageErr> {
        let mut limited = None;
        for counter in counters.iter_mut() {
            match self.read(&counter_key(counter)).await {
                Ok((used, expires)) => {
                    counter.set_remaining(counter.max_value().saturating_sub(used));
                    counter.set_expires_in(expires.unwrap_or_else(|| counter.window()));
                    if limited.is_none() && used.saturating_add(delta) > counter.max_value() {
                        limited = Some(counter.limit().name().map(str::to_string));
                    }
                }
                Err(e) => {
                    failed(e);
                    return Ok(Authorization::Limited(None));
                }
            }
        }
        Ok(match limited {
            Some(name) => Authorization::Limited(name),
            None => Authorization::Ok,
        })
    }

    async fn check_and_update<'a>(
        &self,
        counters: &mut Vec<Counter>,
        delta: u64,
    ) -> Result<Authorization, StorageErr> {
        let Some(first) = counters.first() else {
            return Ok(Authorization::Ok);
        };
        let mut invocation = self.check_and_update.prepare_invoke();
        for c in counters.iter() {
            invocation.key(counter_key(c));
        }
        invocation.key(index_key(first.namespace().as_ref()));
        invocation.arg(delta);
        for c in counters.iter() {
            invocation.arg(c.max_value()).arg(window_ms(c));
        }
        for c in counters.iter() {
            invocation.arg(variables_json(c.set_variables()));
        }
        let mut conn = self.conn.clone();
        match invocation.invoke_async::<usize>(&mut conn).await {
            Ok(0) => Ok(Authorization::Ok),
            Ok(i) => Ok(Authorization::Limited(
                counters
                    .get(i - 1)
                    .and_then(|c| c.limit().name().map(str::to_string)),
            )),
            Err(e) => {
                failed(e);
                Ok(Authorization::Limited(None))
            }
        }
    }

    async fn get_counters(
        &self,
        limits: &HashSet<Arc<Limit>>,
    ) -> Result<HashSet<Counter>, StorageErr> {
        let mut out = HashSet::new();
        let mut by_namespace: HashMap<String, Vec<&Arc<Limit>>> = HashMap::new();
        for l in limits {
            by_namespace
                .entry(l.namespace().as_ref().to_string())
                .or_default()
                .push(l);
        }
        for (ns, limits) in by_namespace {
            let mut conn = self.conn.clone();
            let index: HashMap<String, String> = match redis::cmd("HGETALL")
                .arg(index_key(&ns))
                .query_async(&mut conn)
                .await
            {
                Ok(i) => i,
                Err(e) => {
                    failed(e);
                    continue;
                }
            };
            for (key, vars_json) in index {
                let Some(limit) = limits
                    .iter()
                    .find(|l| key.starts_with(&format!("azure-rls:{ns}:{}:", limit_identity(l))))
                else {
                    continue;
                };
                let Ok(vars) = serde_json::from_str::<BTreeMap<String, String>>(&vars_json) else {
                    continue;
                };
                let Ok((used, Some(expires))) = self.read(&key).await else {
                    continue; // expired (or unreadable): not a live counter
                };
                let Some(mut counter) = counter_from_variables(limit, &vars) else {
                    continue;
                };
                counter.set_remaining(counter.max_value().saturating_sub(used));
                counter.set_expires_in(expires);
                out.insert(counter);
            }
        }
        Ok(out)
    }

    async fn delete_counters(&self, limits: &HashSet<Arc<Limit>>) -> Result<(), StorageErr> {
        let namespaces: HashSet<String> = limits
            .iter()
            .map(|l| l.namespace().as_ref().to_string())
            .collect();
        for ns in namespaces {
            let mut conn = self.conn.clone();
            let keys: Vec<String> = redis::cmd("HKEYS")
                .arg(index_key(&ns))
                .query_async(&mut conn)
                .await
                .unwrap_or_default();
            let doomed: Vec<String> = keys
                .into_iter()
                .filter(|k| {
                    limits
                        .iter()
                        .any(|l| k.starts_with(&format!("azure-rls:{ns}:{}:", limit_identity(l))))
                })
                .collect();
            if doomed.is_empty() {
                continue;
            }
            let result: redis::RedisResult<()> = redis::pipe()
                .del(&doomed)
                .hdel(index_key(&ns), &doomed)
                .query_async(&mut conn)
                .await;
            if let Err(e) = result {
                failed(e);
            }
        }
        Ok(())
    }

    async fn clear(&self) -> Result<(), StorageErr> {
        let mut conn = self.conn.clone();
        if let Err(e) = redis::cmd("FLUSHDB").query_async::<()>(&mut conn).await {
            failed(e);
        }
        Ok(())
    }
}

/// Rebuilds a counter from its limit and resolved variables: the variables are expressions
/// such as `descriptors[0].workload`, so a context with those descriptor entries resolves them
/// to the same values.
fn counter_from_variables(limit: &Limit, vars: &BTreeMap<String, String>) -> Option<Counter> {
    let mut descriptors: Vec<HashMap<String, String>> = Vec::new();
    for (expr, value) in vars {
        let rest = expr.strip_prefix("descriptors[")?;
        let (index, key) = rest.split_once("].")?;
        let index: usize = index.parse().ok()?;
        if descriptors.len() <= index {
            descriptors.resize(index + 1, HashMap::new());
        }
        descriptors[index].insert(key.to_string(), value.clone());
    }
    let mut ctx = Context::default();
    ctx.list_binding("descriptors".to_string(), descriptors);
    Counter::new(limit.clone(), &ctx).ok().flatten()
}
