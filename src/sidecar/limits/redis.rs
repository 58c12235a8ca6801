//! [`RedisLimiter`]: every environment's budgets and concurrency slots kept in one Redis (or Valkey), so all
//! the sidecars of a store share one budget per environment.
//!
//! Exactness comes from doing every decision on the shared state inside Redis, in one Lua script: the GCRA
//! arithmetic of `gcra.rs` (both budgets of a request checked and taken at once, on Redis's own clock so
//! replicas need no synchronised clocks), the concurrency slots, and the replicas' heartbeats. Speed comes
//! from two things. Leases (`lease.rs`): a replica takes a slice of an environment's request budget (and,
//! for large concurrency limits, a few spare slots) in one decision and spends it locally, so most reads
//! never ask Redis; near a budget's edge the slices shrink to one request and every read is decided in
//! Redis. And batching: one task per sidecar worker owns a connection and sends whatever questions queued
//! up while the previous round trip was out as *one* `EVALSHA`, which Redis runs atomically in order. It
//! runs on the worker's own thread, so a question and its answer never cross threads (`queue_here`).
//!
//! Concurrency slots are a hash per environment of replica id to slots held. A replica announces itself
//! every `heartbeat` in a sorted set scored by time; slots of a replica not heard from for three heartbeats
//! are not counted (and are deleted), so a replica killed with SIGKILL gives its slots back within about
//! three heartbeats (3 s by default). Each heartbeat also rewrites this replica's own counts, so a release
//! lost in an outage cannot leak a slot.
//!
//! A request never waits for Redis longer than `timeout`: past it, or when Redis cannot be reached, the
//! limiter switches to its [`Fallback`] at once (logged once, on `/readyz` and in metrics), stops sending
//! requests' admissions to Redis and probes it with the heartbeat; when Redis answers again, what the
//! `share` fallback admitted meanwhile is charged to the shared budgets and the limiter switches back.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use redis::Script;
use secrecy::SecretString;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::{mpsc, oneshot};

use super::fallback::{Fallback, Outage};
use super::lease::{Ask, Decision, Grant, Leases, RESERVE_SHARE};
use super::redis_link::{Connector, Link, RedisMode};
use super::{
    BackendState, Clock, LimitError, LimitRefusal, Limiter, LimitsUnavailable, Permit, Policy, Quota, SystemClock,
    has_rate_budget,
};
use crate::domain::EffectiveLimits;

/// The most requests one round trip carries; more wait for the next (a bound on one script's run time).
const MAX_BATCH: usize = 512;

/// The longest a released slot waits to be sent to Redis along with other questions.
const LEAVE_DELAY: Duration = Duration::from_millis(2);

/// A replica unheard of for this many heartbeats is gone: its slots no longer count.
const LIVE_HEARTBEATS: u32 = 3;

/// Every decision, for a batch of requests, atomically. ARGV: prefix, replica id, liveness (ms), the
/// reserve's share of a budget never leased ([`RESERVE_SHARE`]: 1/10), then ops:
/// - `H`: heartbeat, answers the live replicas; `S env n`: this replica holds n slots (the heartbeat's
///   rewrite);
/// - `G env max rpm fpm slots tokens`: a grant (a read, or a write's slot): up to `slots` slots and up to
///   `tokens` request units, all or nothing for the first of each; answers whether a slot was free, the
///   slots in use, the slots granted, then as `A`, then the units granted;
/// - `A env rpm fpm facts commit`: admit one request and its facts; answers ok, policy, needed, wait µs,
///   then remaining and full-in µs of both budgets;
/// - `C env rpm fpm requests facts`: charge, may go into debt; answers both budgets;
/// - `L env n`: n slots released; `B env rpm n`: n unspent request units of a lease given back.
///
/// A limit of -1 is none. Times are µs on Redis's clock.
const SCRIPT: &str = r#"
local prefix, replica, live_ms, reserve_share = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local MIN = 60000000
-- Every key of a store shares the hash tag {prefix}: one slot, so a Redis Cluster runs the whole script on
-- the node that owns it (KEYS[1], the replicas' set, routes the call there).
local function key(env, kind) return '{' .. prefix .. '}:' .. env .. ':' .. kind end
local replicas = KEYS[1]
local out = {}

local function int(x) return string.format('%d', x) end
local function interval(limit) return math.max(math.floor(MIN / math.max(limit, 1)), 1) end
local function load(key, limit)
  local h = redis.call('HMGET', key, 't', 'n')
  local tat = tonumber(h[1]) or 0
  local old = tonumber(h[2])
  if old ~= nil and old ~= limit then
    local used = 0
    if old > 0 then used = math.ceil(math.max(tat - now, 0) / interval(old)) end
    tat = now + math.min(used, limit) * interval(limit)
  end
  return tat
end
local function save(key, tat, limit)
  redis.call('HSET', key, 't', int(tat), 'n', int(limit))
  redis.call('PEXPIRE', key, math.floor(math.max(tat - now, 0) / 1000) + 1000)
end
local function try(tat, limit, cost)
  if cost == 0 then return tat, 0 end
  if cost > limit then return nil, -1 end
  local iv = interval(limit)
  local new = math.max(tat, now) + cost * iv
  local horizon = now + iv * limit
  if new <= horizon then return new, 0 end
  return nil, new - horizon
end
local function quota(tat, limit)
  if limit < 0 then return 0, 0 end
  local iv = interval(limit)
  local backlog = math.max(tat - now, 0)
  return math.floor(math.max(iv * limit - backlog, 0) / iv), backlog
end
local function slots_key(env) return key(env, 'slots') end
-- Whether a replica announced itself recently (asked once per script run).
local alive = {}
local function is_alive(who)
  if alive[who] == nil then
    local seen = redis.call('ZSCORE', replicas, who)
    alive[who] = (seen and tonumber(seen) > now_ms - live_ms) or false
  end
  return alive[who]
end
-- Slots held by live replicas (a dead replica's are deleted on the way).
local function held(key)
  local fields = redis.call('HGETALL', key)
  local total = 0
  for j = 1, #fields, 2 do
    local who, n = fields[j], tonumber(fields[j + 1])
    if who == replica or is_alive(who) then
      total = total + n
    else
      redis.call('HDEL', key, who)
    end
  end
  return total
end
-- A new field may be a new hash: give it its expiry; the heartbeat renews it after.
local function take_slots(key, n)
  if redis.call('HINCRBY', key, replica, n) == n then
    redis.call('PEXPIRE', key, live_ms * 10)
  end
end
-- One request of `requests` request units (0 or more: a lease takes several) with `facts` facts against
-- both budgets: {ok, policy, needed, wait, budgets...}; taken when ok and commit. The budget that keeps it
-- out longest refuses it; one it can never fit counts as longest.
local function admit(env, rpm, fpm, requests, facts, commit)
  local rkey, fkey = key(env, 'requests'), key(env, 'facts')
  local rtat, ftat = 0, 0
  if rpm >= 0 then rtat = load(rkey, rpm) end
  if fpm >= 0 then ftat = load(fkey, fpm) end
  local ok, policy, needed, wait = 1, 0, 0, 0
  local rnew, fnew = rtat, ftat
  local function consider(p, cost, w)
    if ok == 1 or (wait ~= -1 and (w == -1 or w > wait)) then
      ok, policy, needed, wait = 0, p, cost, w
    end
  end
  if rpm >= 0 then
    local new, w = try(rtat, rpm, requests)
    if new then rnew = new else consider(0, 1, w) end
  end
  if fpm >= 0 then
    local new, w = try(ftat, fpm, facts)
    if new then fnew = new else consider(1, facts, w) end
  end
  if ok == 1 and commit then
    if rpm >= 0 and requests > 0 then save(rkey, rnew, rpm); rtat = rnew end
    if fpm >= 0 and facts > 0 then save(fkey, fnew, fpm); ftat = fnew end
  end
  local rr, rf = quota(rtat, rpm)
  local fr, ff = quota(ftat, fpm)
  return {ok, policy, needed, wait, rr, rf, fr, ff}
end
-- How many of `want` request units a lease takes: all that fit above the reserve (1/reserve_share of the
-- budget, never leased), or one when only the reserve is left (decided request by request).
local function leasable(env, rpm, want)
  if rpm < 0 or want <= 1 then return want end
  local tat = load(key(env, 'requests'), rpm)
  local iv = interval(rpm)
  local available = math.floor((now + iv * rpm - math.max(tat, now)) / iv)
  return math.max(1, math.min(want, available - math.floor(rpm / reserve_share)))
end

local i = 5
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'H' then
    redis.call('ZADD', replicas, now_ms, replica)
    redis.call('ZREMRANGEBYSCORE', replicas, '-inf', now_ms - live_ms)
    redis.call('PEXPIRE', replicas, live_ms * 10)
    out[#out + 1] = {redis.call('ZCARD', replicas)}
    i = i + 1
  elseif op == 'S' then
    local key, n = slots_key(ARGV[i + 1]), tonumber(ARGV[i + 2])
    if n > 0 then
      redis.call('HSET', key, replica, n)
      redis.call('PEXPIRE', key, live_ms * 10)
    else
      redis.call('HDEL', key, replica)
    end
    i = i + 3
  elseif op == 'L' then
    local key, n = slots_key(ARGV[i + 1]), tonumber(ARGV[i + 2])
    if redis.call('HINCRBY', key, replica, -n) <= 0 then redis.call('HDEL', key, replica) end
    i = i + 3
  elseif op == 'G' then
    -- A grant: up to `slots` slots (0: none asked; all or none of the first must be free) and up to
    -- `tokens` request units, the asking request's own first; refused, it takes nothing.
    local env, max = ARGV[i + 1], tonumber(ARGV[i + 2])
    local rpm, fpm = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
    local slots, tokens = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
    local key = slots_key(env)
    local total = 0
    if slots > 0 then total = held(key) end
    if slots > 0 and total >= max then
      out[#out + 1] = {0, total, 0}
    else
      local n = leasable(env, rpm, tokens)
      local answer = admit(env, rpm, fpm, n, 0, true)
      local granted = 0
      if answer[1] == 1 and slots > 0 then
        -- Never more than half of what is free (and one): the other replicas get the rest.
        granted = math.min(slots, math.max(1, math.floor((max - total) / 2)))
        take_slots(key, granted)
        total = total + granted
      end
      if answer[1] ~= 1 then n = 0 end
      out[#out + 1] = {1, total, granted, answer[1], answer[2], answer[3], answer[4], answer[5], answer[6],
        answer[7], answer[8], n}
    end
    i = i + 7
  elseif op == 'B' then
    -- Unspent request units of a lease given back, when the budget is still the one they were taken under.
    local rkey, rpm, n = key(ARGV[i + 1], 'requests'), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local h = redis.call('HMGET', rkey, 't', 'n')
    local tat = tonumber(h[1])
    if tat ~= nil and tonumber(h[2]) == rpm and tat > now then
      save(rkey, math.max(tat - n * interval(rpm), now), rpm)
    end
    i = i + 4
  elseif op == 'A' then
    local facts, commit = tonumber(ARGV[i + 4]), ARGV[i + 5] == '1'
    out[#out + 1] = admit(ARGV[i + 1], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), 1, facts, commit)
    i = i + 6
  elseif op == 'C' then
    local env = ARGV[i + 1]
    local rpm, fpm = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
    local rkey, fkey = key(env, 'requests'), key(env, 'facts')
    local rtat, ftat = 0, 0
    if rpm >= 0 then rtat = load(rkey, rpm) end
    if fpm >= 0 then ftat = load(fkey, fpm) end
    local requests, facts = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
    if rpm >= 0 and requests > 0 then
      rtat = math.max(rtat, now) + requests * interval(rpm)
      save(rkey, rtat, rpm)
    end
    if fpm >= 0 and facts > 0 then
      ftat = math.max(ftat, now) + facts * interval(fpm)
      save(fkey, ftat, fpm)
    end
    local rr, rf = quota(rtat, rpm)
    local fr, ff = quota(ftat, fpm)
    out[#out + 1] = {rr, rf, fr, ff}
    i = i + 6
  else
    return redis.error_reply('unknown op ' .. tostring(op))
  end
end
return out
"#;

/// How to reach Redis and what to do without it.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// `redis://[USER:PASSWORD@]HOST[:PORT][/DB]`, `rediss://…` (TLS) or `unix:///PATH`; in cluster and
    /// sentinel mode, several separated by commas (nodes, or sentinels).
    pub url: SecretString,
    /// Replaces the URL's password (read from `--redis-password-file`).
    pub password: Option<SecretString>,
    pub fallback: Fallback,
    /// The longest a request waits for Redis before the fallback decides.
    pub timeout: Duration,
    /// How often this replica announces itself; three missed announcements and its slots are freed.
    pub heartbeat: Duration,
    /// Prefix of every key (several stores may share one Redis); the keys' hash tag in a Cluster.
    pub prefix: String,
    /// One server, a Cluster, or Sentinel.
    pub mode: RedisMode,
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: SecretString::from(url.into()),
            password: None,
            fallback: Fallback::Share,
            timeout: Duration::from_millis(100),
            heartbeat: Duration::from_secs(1),
            prefix: "orgkeeper".into(),
            mode: RedisMode::Standalone,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// The URL is not one Redis understands (the URL itself is not repeated: it may hold a password).
    #[error("--redis-url is not a Redis URL (redis://HOST:PORT, rediss://HOST:PORT for TLS, or unix:///PATH): {0}")]
    Url(String),
    #[error("cannot set up the Redis client: {0}")]
    Client(String),
}

/// A grant's answer: the slot the request holds (when it asked for one), and the script's row.
type GrantAnswer = (Option<Permit>, Vec<i64>);

/// A job and when it was queued (the round trip carrying it must end within the timeout of that).
type Queued = (tokio::time::Instant, Job);

/// One request's question to Redis, with where to send the answer.
enum Job {
    Admit {
        environment: String,
        limits: EffectiveLimits,
        facts: u64,
        commit: bool,
        reply: oneshot::Sender<Result<Vec<i64>, ()>>,
    },
    Charge {
        environment: String,
        limits: EffectiveLimits,
        facts: u64,
        reply: oneshot::Sender<Result<Vec<i64>, ()>>,
    },
    /// A slot and request units for a lease (a read), or a write's slot.
    Grant(PendingGrant),
    /// Slots released.
    Leave { environment: String, slots: u64 },
}

/// A grant asked and not answered yet. Dropped unanswered (Redis failed, the limiter switched to its
/// fallback), it puts back into the lease what the request took from it.
struct PendingGrant {
    environment: String,
    limits: EffectiveLimits,
    /// A read (one request from the budget) rather than a write's slot.
    read: bool,
    ask: Ask,
    reply: Option<oneshot::Sender<Result<GrantAnswer, ()>>>,
    shared: Weak<Shared>,
}

impl PendingGrant {
    /// Whether Redis is asked about the budgets: for a read, unless its request came from the lease
    /// (then the lease's view is the one to report).
    fn asks_budgets(read: bool, ask: &Ask, limits: &EffectiveLimits) -> bool {
        read && (ask.tokens > 0 || limits.requests_per_minute.is_none())
    }
}

impl Drop for PendingGrant {
    fn drop(&mut self) {
        if self.reply.is_some()
            && let Some(shared) = self.shared.upgrade()
        {
            let now = shared.clock.now();
            shared.leases().refused(&self.environment, &self.ask, &[], now);
        }
    }
}

/// What the request path and the flushing tasks share.
struct Shared {
    /// The queue of the task started with the limiter: it heartbeats, probes and recovers, and answers
    /// questions asked outside a sidecar worker.
    queue: mpsc::UnboundedSender<Queued>,
    /// For the connection each sidecar worker's own task opens.
    connector: Connector,
    prefix: String,
    heartbeat: Duration,
    /// What this replica holds of each environment's budgets and slots (`lease.rs`); the slots held are
    /// rewritten into Redis by every heartbeat.
    leases: Mutex<Leases>,
    replica: String,
    fallback: Fallback,
    timeout: Duration,
    clock: Arc<dyn Clock>,
    healthy: AtomicBool,
    replicas: AtomicU64,
    fallbacks: AtomicU64,
    /// Present while Redis is away: the fallback's local budgets and what they admitted.
    outage: Mutex<Option<(Arc<Outage>, String)>>,
}

/// Limits shared by every sidecar using the same Redis.
pub struct RedisLimiter {
    shared: Arc<Shared>,
}

/// Releases a slot when dropped: back into the lease, and what the lease does not keep back to Redis,
/// through the Redis task of the thread the request ends on (`queue_here`: found only then, as most
/// releases stay in the lease), or the limiter's own task when that one has ended with its worker.
struct RedisSlot {
    environment: String,
    max: u64,
    shared: Weak<Shared>,
}

impl Drop for RedisSlot {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let replicas = shared.replicas.load(Ordering::Relaxed);
        let now = shared.clock.now();
        let slots = shared.leases().release(&self.environment, self.max, replicas, now);
        if slots == 0 || !shared.healthy.load(Ordering::Acquire) {
            // Kept as spare, or Redis is away (the heartbeat's rewrite sets the count when it is back).
            return;
        }
        let leave = (
            tokio::time::Instant::now(),
            Job::Leave {
                environment: std::mem::take(&mut self.environment),
                slots,
            },
        );
        if let Err(mpsc::error::SendError(leave)) = queue_here(&shared).send(leave) {
            let _ = shared.queue.send(leave);
        }
    }
}

thread_local! {
    /// This thread's Redis task per limiter, when the thread runs a sidecar worker's runtime.
    static WORKER_QUEUES: RefCell<Vec<(Weak<Shared>, mpsc::UnboundedSender<Queued>)>> =
        const { RefCell::new(Vec::new()) };
}

/// Where a question asked on this thread goes. A sidecar worker (a single-threaded runtime) gets a Redis
/// task and connection of its own, started on its first question: the question, the round trip and the
/// answer then stay on the worker's thread. Handing them to a task on another runtime cost a cross-thread
/// wake-up each way, which doubled the sidecar's CPU per request (docs/sidecar.md, "What it costs").
fn queue_here(shared: &Arc<Shared>) -> mpsc::UnboundedSender<Queued> {
    let on_worker = Handle::try_current().is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::CurrentThread);
    if !on_worker {
        return shared.queue.clone();
    }
    WORKER_QUEUES.with_borrow_mut(|queues| {
        // A limiter dropped, or a runtime shut down with its task: start afresh.
        queues.retain(|(owner, queue)| owner.strong_count() > 0 && !queue.is_closed());
        if let Some((_, queue)) = queues
            .iter()
            .find(|(owner, _)| std::ptr::eq(owner.as_ptr(), Arc::as_ptr(shared)))
        {
            return queue.clone();
        }
        let connection = match shared.connector.link() {
            Ok(connection) => connection,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open a worker's own Redis connection: using the shared one");
                return shared.queue.clone();
            }
        };
        let (queue, jobs) = mpsc::unbounded_channel();
        tokio::spawn(flush(Arc::downgrade(shared), jobs, connection, false));
        queues.push((Arc::downgrade(shared), queue.clone()));
        queue
    })
}

fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |n| n.min(i64::MAX as u64) as i64)
}

fn micros(n: i64) -> Duration {
    Duration::from_micros(n.max(0) as u64)
}

/// The budgets left, from a row's `[requests remaining, full in, facts remaining, full in]`.
fn quotas(limits: &EffectiveLimits, row: &[i64]) -> Vec<Quota> {
    let mut quotas = Vec::with_capacity(2);
    for (policy, limit, at) in [
        (Policy::Requests, limits.requests_per_minute, 0),
        (Policy::FactWrites, limits.fact_writes_per_minute, 2),
    ] {
        let (Some(limit), Some(remaining), Some(full_in)) = (limit, row.get(at), row.get(at + 1)) else {
            continue;
        };
        quotas.push(Quota {
            policy,
            limit,
            remaining: (*remaining).max(0) as u64,
            full_in: Some(micros(*full_in)),
        });
    }
    quotas
}

/// An admission's answer: `[ok, policy, needed, wait, …quotas]`.
fn admission(limits: &EffectiveLimits, row: &[i64]) -> Result<Vec<Quota>, LimitRefusal> {
    let left = quotas(limits, row.get(4..).unwrap_or_default());
    if row.first() == Some(&1) {
        return Ok(left);
    }
    let (policy, limit) = match row.get(1) {
        Some(1) => (Policy::FactWrites, limits.fact_writes_per_minute),
        _ => (Policy::Requests, limits.requests_per_minute),
    };
    let wait = row.get(3).copied().unwrap_or(-1);
    Err(LimitRefusal {
        policy,
        limit: limit.unwrap_or_default(),
        needed: row.get(2).copied().unwrap_or_default().max(0) as u64,
        retry_after: (wait >= 0).then(|| micros(wait)),
        quotas: left,
    })
}

fn concurrency(max: u64, in_use: u64) -> Quota {
    Quota {
        policy: Policy::Concurrency,
        limit: max,
        remaining: max.saturating_sub(in_use),
        full_in: None,
    }
}

impl RedisLimiter {
    /// A limiter on the Redis at `options.url`. Connects lazily: a sidecar starts (in fallback) even when
    /// Redis is not up yet. Must be called inside a Tokio runtime (it spawns the task talking to Redis).
    pub fn connect(options: RedisOptions) -> Result<Self, RedisError> {
        let connector = Connector::new(&options.url, options.password.as_ref(), &options.mode, options.timeout)?;
        let connection = connector.link()?;
        let (queue, jobs) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue,
            connector,
            prefix: options.prefix,
            heartbeat: options.heartbeat,
            leases: Mutex::new(Leases::default()),
            replica: replica_id(),
            fallback: options.fallback,
            timeout: options.timeout,
            clock: Arc::new(SystemClock::default()),
            // Until Redis first answers, the fallback decides.
            healthy: AtomicBool::new(false),
            replicas: AtomicU64::new(1),
            fallbacks: AtomicU64::new(0),
            outage: Mutex::new(None),
        });
        shared.begin_outage("not connected to Redis yet".into());
        shared.fallbacks.store(0, Ordering::Relaxed);
        tokio::spawn(flush(Arc::downgrade(&shared), jobs, connection, true));
        Ok(RedisLimiter { shared })
    }

    /// This replica's id in Redis.
    pub fn replica(&self) -> &str {
        &self.shared.replica
    }

    async fn ask<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T, ()>>) -> Job) -> Option<T> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        // No timer per request: the Redis task answers or drops every question within `timeout` of the
        // oldest one in its round trip (see `flush`), and a dropped question is the fallback's.
        queue_here(&self.shared)
            .send((tokio::time::Instant::now(), job(reply)))
            .ok()?;
        answer.await.ok()?.ok()
    }

    fn unavailable(&self) -> LimitError {
        LimitError::Unavailable(LimitsUnavailable {
            detail: self.shared.detail(),
        })
    }

    /// A slot (when the environment has a concurrency limit) and, for a read, one request from the budget:
    /// from this replica's lease when it holds them, else from Redis (which may lease more). `None`: Redis
    /// cannot answer, and the fallback decides.
    async fn grant(
        &self,
        environment: &str,
        limits: &EffectiveLimits,
        read: bool,
    ) -> Option<Result<(Permit, Vec<Quota>), LimitError>> {
        if !self.shared.healthy.load(Ordering::Acquire) {
            return None;
        }
        let ask = loop {
            let answered = {
                let now = self.shared.clock.now();
                let replicas = self.shared.replicas.load(Ordering::Relaxed);
                let mut leases = self.shared.leases();
                match leases.try_enter(environment, limits, read, replicas, now) {
                    Decision::Admitted(quotas) => {
                        let quota = limits
                            .max_concurrent_requests
                            .map(|max| (max, leases.concurrency(environment, max)));
                        drop(leases);
                        let permit = match quota {
                            Some((max, quota)) => Permit::new(Box::new(self.slot(environment, max)), Some(quota)),
                            None => Permit::default(),
                        };
                        return Some(Ok((permit, quotas)));
                    }
                    Decision::Ask(ask) => break ask,
                    // Created under the lock, so the answer's notification cannot slip in before it.
                    Decision::Wait(asking) => asking.notified_owned(),
                }
            };
            // The ask is answered or dropped within the timeout (`flush`); past it Redis has failed and the
            // limiter has switched to its fallback, which the next turn finds.
            let _ = tokio::time::timeout(self.shared.timeout, answered).await;
            if !self.shared.healthy.load(Ordering::Acquire) {
                return None;
            }
        };
        let (reply, answer) = oneshot::channel();
        let pending = PendingGrant {
            environment: environment.to_owned(),
            limits: *limits,
            read,
            ask,
            reply: Some(reply),
            shared: Arc::downgrade(&self.shared),
        };
        // No timer per request: the Redis task answers or drops every question within `timeout` of the
        // oldest one in its round trip (see `flush`); dropped, the lease gets back what it lent and the
        // fallback decides.
        queue_here(&self.shared)
            .send((tokio::time::Instant::now(), Job::Grant(pending)))
            .ok()?;
        let (permit, row) = answer.await.ok()?.ok()?;
        if let (Some(0), Some(max)) = (row.first(), limits.max_concurrent_requests) {
            let in_use = row.get(1).copied().unwrap_or_default().max(0) as u64;
            return Some(Err(LimitError::Refused(LimitRefusal {
                policy: Policy::Concurrency,
                limit: max,
                needed: 1,
                retry_after: None,
                quotas: vec![concurrency(max, in_use)],
            })));
        }
        let admitted = if PendingGrant::asks_budgets(read, &ask, limits) {
            admission(limits, row.get(3..11).unwrap_or_default())
        } else {
            Ok(self
                .shared
                .leases()
                .quotas(environment, limits, self.shared.clock.now()))
        };
        Some(
            admitted
                .map(|quotas| (permit.unwrap_or_default(), quotas))
                .map_err(LimitError::from),
        )
    }

    /// A slot in the lease, released into it when dropped.
    fn slot(&self, environment: &str, max: u64) -> RedisSlot {
        RedisSlot {
            environment: environment.to_owned(),
            max,
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// A slot while Redis is away, as the fallback says.
    fn enter_fallback(&self, environment: &str, limits: &EffectiveLimits) -> Result<Permit, LimitError> {
        match self.shared.fallback {
            Fallback::Allow => Ok(Permit::default()),
            Fallback::Deny => Err(self.unavailable()),
            Fallback::Share => {
                let outage = self.shared.current_outage();
                Ok(outage.limiter.enter_now(environment, &outage.share(limits))?)
            }
        }
    }

    async fn take(
        &self,
        environment: &str,
        limits: &EffectiveLimits,
        facts: u64,
        commit: bool,
    ) -> Result<Vec<Quota>, LimitError> {
        if !has_rate_budget(limits) {
            return Ok(Vec::new());
        }
        let asked = self
            .ask(|reply| Job::Admit {
                environment: environment.to_owned(),
                limits: *limits,
                facts,
                commit,
                reply,
            })
            .await;
        if let Some(row) = asked {
            return admission(limits, &row).map_err(LimitError::from);
        }
        match self.shared.fallback {
            Fallback::Allow => Ok(Vec::new()),
            Fallback::Deny => Err(self.unavailable()),
            Fallback::Share => {
                let outage = self.shared.current_outage();
                let share = outage.share(limits);
                let quotas = outage.limiter.take_now(environment, &share, facts, commit)?;
                if commit {
                    outage.spend(environment, limits, 1, facts);
                }
                Ok(quotas)
            }
        }
    }
}

/// A random id for this process: a restarted replica is a new one (its predecessor's slots expire).
fn replica_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_default();
    format!("{host}-{}-{:016x}", std::process::id(), rand::random::<u64>())
}

impl Shared {
    fn leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn detail(&self) -> String {
        match &*self.outage.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((_, why)) => why.clone(),
            None => "Redis is unavailable".into(),
        }
    }

    /// The current outage's local state (a new one if the switch raced with recovery).
    fn current_outage(&self) -> Arc<Outage> {
        let mut outage = self.outage.lock().unwrap_or_else(|e| e.into_inner());
        outage
            .get_or_insert_with(|| {
                (
                    Arc::new(Outage::new(self.clock.clone(), self.replicas.load(Ordering::Relaxed))),
                    "Redis is unavailable".into(),
                )
            })
            .0
            .clone()
    }

    fn begin_outage(&self, why: String) {
        let replicas = self.replicas.load(Ordering::Relaxed);
        *self.outage.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Arc::new(Outage::new(self.clock.clone(), replicas)), why));
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// Switches to the fallback (once: later failures of the same outage say nothing).
    fn trip(&self, why: String) {
        if self.healthy.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                fallback = %self.fallback,
                replicas = self.replicas.load(Ordering::Relaxed),
                reason = %why,
                "shared limits unavailable: the {} fallback decides until Redis answers again",
                self.fallback
            );
            self.begin_outage(why);
            self.leases().forget();
        }
    }
}

impl Limiter for RedisLimiter {
    fn enter<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
    ) -> BoxFuture<'a, Result<Permit, LimitError>> {
        Box::pin(async move {
            if limits.max_concurrent_requests.is_none() {
                return Ok(Permit::default());
            }
            if let Some(granted) = self.grant(environment, limits, false).await {
                return granted.map(|(permit, _)| permit);
            }
            self.enter_fallback(environment, limits)
        })
    }

    fn enter_read<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
    ) -> BoxFuture<'a, Result<(Permit, Vec<Quota>), LimitError>> {
        Box::pin(async move {
            let unlimited = limits.max_concurrent_requests.is_none()
                && limits.requests_per_minute.is_none()
                && limits.fact_writes_per_minute.is_none();
            if unlimited {
                return Ok((Permit::default(), Vec::new()));
            }
            if let Some(granted) = self.grant(environment, limits, true).await {
                return granted;
            }
            // The fallback decides (the limiter has switched to it).
            let permit = self.enter_fallback(environment, limits)?;
            let quotas = self.take(environment, limits, 0, true).await?;
            Ok((permit, quotas))
        })
    }

    fn peek<'a>(&'a self, environment: &'a str, limits: &'a EffectiveLimits) -> BoxFuture<'a, Result<(), LimitError>> {
        Box::pin(async move {
            let Some(per_minute) = limits.requests_per_minute else {
                return Ok(());
            };
            let now = self.shared.clock.now();
            if self.shared.healthy.load(Ordering::Acquire)
                && self.shared.leases().has_token(environment, per_minute, now)
            {
                return Ok(());
            }
            self.take(environment, limits, 0, false).await.map(|_| ())
        })
    }

    fn admit<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
        facts: u64,
    ) -> BoxFuture<'a, Result<Vec<Quota>, LimitError>> {
        Box::pin(self.take(environment, limits, facts, true))
    }

    fn charge<'a>(
        &'a self,
        environment: &'a str,
        limits: &'a EffectiveLimits,
        facts: u64,
    ) -> BoxFuture<'a, Vec<Quota>> {
        Box::pin(async move {
            if !has_rate_budget(limits) {
                return Vec::new();
            }
            let asked = self
                .ask(|reply| Job::Charge {
                    environment: environment.to_owned(),
                    limits: *limits,
                    facts,
                    reply,
                })
                .await;
            if let Some(row) = asked {
                return quotas(limits, &row);
            }
            // The work is done: whatever the fallback, the facts are owed to the shared budget.
            let outage = self.shared.current_outage();
            outage.spend(environment, limits, 0, facts);
            outage.limiter.charge_now(environment, &outage.share(limits), facts)
        })
    }

    fn retain(&self, _keep: &dyn Fn(&str) -> bool) {
        // Redis forgets a deleted environment's keys by their own expiry (a minute at most).
    }

    fn backend(&self) -> Option<BackendState> {
        let shared = self.shared.healthy.load(Ordering::Acquire);
        Some(BackendState {
            shared,
            replicas: self.shared.replicas.load(Ordering::Relaxed),
            fallbacks: self.shared.fallbacks.load(Ordering::Relaxed),
            detail: (!shared).then(|| format!("{}; fallback: {}", self.shared.detail(), self.shared.fallback)),
        })
    }
}

/// A task owning a Redis connection: batches queued jobs into one script call per round trip and
/// switches to the fallback when Redis fails. The limiter's own task (`beats`) also heartbeats, probes
/// Redis while in fallback and switches back. Ends when the limiter is dropped.
async fn flush(shared: Weak<Shared>, mut jobs: mpsc::UnboundedReceiver<Queued>, mut connection: Link, beats: bool) {
    let script = Script::new(SCRIPT);
    let Some((prefix, heartbeat)) = shared.upgrade().map(|shared| (shared.prefix.clone(), shared.heartbeat)) else {
        return;
    };
    let live_ms = (heartbeat * LIVE_HEARTBEATS).as_millis().max(1) as u64;
    // KEYS[1]: it routes the call to the node owning the store's slot in a Cluster.
    let replicas_key = format!("{{{prefix}}}:replicas");
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Set while only releases wait: they go with the next question, or alone after LEAVE_DELAY.
    let mut leaves_due: Option<tokio::time::Instant> = None;
    // When the oldest question waiting was queued: its round trip must end within `timeout` of it.
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let mut oldest = far();
    loop {
        let (beat, leaves_now) = tokio::select! {
            biased;
            job = jobs.recv() => match job {
                Some((at, job)) => { oldest = oldest.min(at); batch.push(job); (false, false) }
                None => return,
            },
            _ = ticker.tick(), if beats => (true, false),
            _ = tokio::time::sleep_until(leaves_due.unwrap_or_else(tokio::time::Instant::now)), if leaves_due.is_some() => {
                (false, true)
            }
        };
        // Whatever queued meanwhile goes in the same round trip; a couple of yields let requests that are
        // being handled right now join it (a timer would cost a millisecond: Tokio's resolution).
        for _ in 0..3 {
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok((at, job)) => {
                        oldest = oldest.min(at);
                        batch.push(job);
                    }
                    Err(_) => break,
                }
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            tokio::task::yield_now().await;
        }
        let only_leaves = batch.iter().all(|job| matches!(job, Job::Leave { .. }));
        if only_leaves && !beat && !leaves_now && batch.len() < MAX_BATCH {
            // A release alone is not worth a round trip of its own right away: under load the next
            // question comes within microseconds; idle, it holds a slot LEAVE_DELAY longer.
            leaves_due.get_or_insert_with(|| tokio::time::Instant::now() + LEAVE_DELAY);
            continue;
        }
        leaves_due = None;
        let queued = std::mem::replace(&mut oldest, far());
        let Some(shared) = shared.upgrade() else { return };
        let healthy = shared.healthy.load(Ordering::Acquire);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&replicas_key)
            .arg(&prefix)
            .arg(&shared.replica)
            .arg(live_ms)
            .arg(RESERVE_SHARE);
        let mut ops = 0;
        if beat {
            invocation.arg("H");
            let mut leases = shared.leases();
            // What leases hold unused goes back: tokens the budget gets again, spare slots of idle
            // environments (in the rewrite below).
            for back in leases.expire(shared.clock.now()) {
                if back.tokens > 0 && healthy {
                    invocation
                        .arg("B")
                        .arg(&back.environment)
                        .arg(back.per_minute)
                        .arg(back.tokens);
                }
                if back.forgotten {
                    invocation.arg("S").arg(&back.environment).arg(0);
                }
            }
            for (environment, n) in leases.held() {
                invocation.arg("S").arg(environment).arg(n);
            }
        }
        // Releases count at once (the permit is gone); the heartbeat's rewrite repairs a lost one.
        let mut asking = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            match job {
                Job::Leave { environment, slots } => {
                    if healthy {
                        invocation.arg("L").arg(environment).arg(slots);
                        ops += 1;
                    }
                }
                // While in fallback only the heartbeat probes Redis; a job that raced the switch is
                // answered at once and decided by the fallback.
                _ if !healthy => drop(job),
                job => {
                    match &job {
                        Job::Admit {
                            environment,
                            limits,
                            facts,
                            commit,
                            ..
                        } => {
                            invocation
                                .arg("A")
                                .arg(environment)
                                .arg(limit_arg(limits.requests_per_minute))
                                .arg(limit_arg(limits.fact_writes_per_minute))
                                .arg(*facts)
                                .arg(u8::from(*commit));
                        }
                        Job::Charge {
                            environment,
                            limits,
                            facts,
                            ..
                        } => {
                            invocation
                                .arg("C")
                                .arg(environment)
                                .arg(limit_arg(limits.requests_per_minute))
                                .arg(limit_arg(limits.fact_writes_per_minute))
                                .arg(0)
                                .arg(*facts);
                        }
                        Job::Grant(pending) => {
                            let limits = &pending.limits;
                            let (rpm, fpm) = if PendingGrant::asks_budgets(pending.read, &pending.ask, limits) {
                                (limits.requests_per_minute, limits.fact_writes_per_minute)
                            } else {
                                (None, None)
                            };
                            invocation
                                .arg("G")
                                .arg(&pending.environment)
                                .arg(limit_arg(limits.max_concurrent_requests))
                                .arg(limit_arg(rpm))
                                .arg(limit_arg(fpm))
                                .arg(pending.ask.slots)
                                .arg(pending.ask.tokens);
                        }
                        Job::Leave { .. } => unreachable!("handled above"),
                    }
                    ops += 1;
                    asking.push(job);
                }
            }
        }
        if !beat && ops == 0 {
            continue;
        }
        // Coming back: what the fallback admitted is charged before anything else is decided.
        let recovering = beat && !healthy;
        let spent = if recovering {
            let outage = shared.outage.lock().unwrap_or_else(|e| e.into_inner()).clone();
            outage.map(|(outage, _)| outage.take_spent()).unwrap_or_default()
        } else {
            Vec::new()
        };
        for (environment, spent) in &spent {
            invocation
                .arg("C")
                .arg(environment)
                .arg(limit_arg(spent.limits.requests_per_minute))
                .arg(limit_arg(spent.limits.fact_writes_per_minute))
                .arg(spent.requests)
                .arg(spent.facts);
        }
        // Within the timeout of the oldest question (or of now, for a heartbeat alone): a question that
        // waited behind a slow round trip is not given a whole timeout more.
        let deadline = queued.min(tokio::time::Instant::now()) + shared.timeout;
        let answer = tokio::time::timeout_at(deadline, connection.invoke(&invocation)).await;
        if answer.is_err() {
            connection.forget();
        }
        let mut rows = match answer {
            Ok(Ok(rows)) => rows.into_iter(),
            failed => {
                let why = match failed {
                    Err(_) => format!("Redis did not answer within {} ms", shared.timeout.as_millis()),
                    Ok(Err(e)) => format!("Redis: {e}"),
                    Ok(Ok(_)) => unreachable!(),
                };
                if recovering {
                    // Not charged this time: keep it for the next probe.
                    let outage = shared.current_outage();
                    for (environment, spent) in spent {
                        outage.spend(&environment, &spent.limits, spent.requests, spent.facts);
                    }
                    tracing::debug!(reason = %why, "Redis still unavailable");
                } else {
                    shared.trip(why);
                }
                // Dropping the replies tells the waiting requests to ask the fallback.
                asking.clear();
                continue;
            }
        };
        if beat && let Some(replicas) = rows.next().and_then(|row| row.first().copied()) {
            shared.replicas.store(replicas.max(1) as u64, Ordering::Relaxed);
        }
        for job in asking {
            let row = rows.next().unwrap_or_default();
            match job {
                Job::Admit { reply, .. } | Job::Charge { reply, .. } => {
                    let _ = reply.send(Ok(row));
                }
                Job::Grant(mut pending) => {
                    // Answered: from here the lease is settled by this answer, not by the drop.
                    let reply = pending.reply.take();
                    let slot = settle(&shared, &pending, &row);
                    if let Some(reply) = reply {
                        // A requester that gave up drops the permit with the reply, which releases the slot.
                        let _ = reply.send(Ok((slot, row)));
                    }
                }
                Job::Leave { .. } => {}
            }
        }
        if recovering {
            shared.outage.lock().unwrap_or_else(|e| e.into_inner()).take();
            shared.healthy.store(true, Ordering::Release);
            tracing::info!(
                replicas = shared.replicas.load(Ordering::Relaxed),
                "shared limits available again: Redis decides"
            );
        }
    }
}

/// Settles a grant's answer in the lease (what Redis granted is added, what the request took from the
/// lease goes back when refused), and returns the slot the request holds, if it asked for one and was
/// admitted.
fn settle(shared: &Arc<Shared>, pending: &PendingGrant, row: &[i64]) -> Option<Permit> {
    let now = shared.clock.now();
    let value = |at: usize| row.get(at).copied().unwrap_or_default().max(0) as u64;
    let admitted = row.first() == Some(&1) && row.get(3) == Some(&1);
    let (ask, limits, environment) = (&pending.ask, &pending.limits, &pending.environment);
    let reported = if PendingGrant::asks_budgets(pending.read, ask, limits) {
        quotas(limits, row.get(7..11).unwrap_or_default())
    } else {
        Vec::new()
    };
    let mut leases = shared.leases();
    if !admitted {
        leases.refused(environment, ask, &reported, now);
        return None;
    }
    let granted = Grant {
        slots: value(2),
        tokens: value(11),
        in_use: value(1),
    };
    leases.granted(environment, limits, ask, granted, &reported, now);
    let max = limits.max_concurrent_requests.filter(|_| ask.holds_slot())?;
    let quota = leases.concurrency(environment, max);
    drop(leases);
    let slot = RedisSlot {
        environment: environment.clone(),
        max,
        shared: Arc::downgrade(shared),
    };
    Some(Permit::new(Box::new(slot), Some(quota)))
}
