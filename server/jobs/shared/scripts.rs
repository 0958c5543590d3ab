//! The Lua scripts that make a runner's append and renew, and a watcher's take-over, single
//! steps in Redis (checked against the job's lease and end), and what their replies say.
/// Appends events as the job's lease holder, skipping those already written.
/// KEYS: events, meta, lease, article. ARGV: replica, lease ms, ttl ms, "1" when the batch
/// ends the job, the article ("" if none), then sequence and event pairs.
/// Returns the stream's top sequence, or -1 (another replica holds the lease), -2 (another
/// replica ended the job), -3 (the job's records are gone).
pub(super) const APPEND: &str = r"
local holder = redis.call('GET', KEYS[3])
if holder and holder ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then return -3 end
local ended = redis.call('HGET', KEYS[2], 'ended')
if ended and ended ~= ARGV[1] then return -2 end
local top = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then top = tonumber(string.sub(last[1][1], 3)) or 0 end
if ARGV[5] ~= '' then redis.call('SET', KEYS[4], ARGV[5], 'PX', ARGV[3]) end
for i = 6, #ARGV, 2 do
  local sequence = tonumber(ARGV[i])
  if sequence > top then
    redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'e', ARGV[i + 1])
    top = sequence
  end
end
if ARGV[4] == '1' then redis.call('HSET', KEYS[2], 'ended', ARGV[1]) end
if not ended then redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2]) end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return top
";

/// Renews the runner's lease (taking it back if it lapsed) and reads the cancel flag.
/// KEYS: lease, cancel, meta. ARGV: replica, lease ms. Returns 1 (cancel asked), 0, or -1,
/// -2, -3 as [`APPEND`].
pub(super) const RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return -1 end
if redis.call('EXISTS', KEYS[3]) == 0 then return -3 end
local ended = redis.call('HGET', KEYS[3], 'ended')
if ended and ended ~= ARGV[1] then return -2 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return redis.call('EXISTS', KEYS[2])
";

/// A watcher takes over the lease of a job that has not ended and whose lease is gone.
/// KEYS: lease, meta. ARGV: replica, lease ms. Returns 1 when taken.
pub(super) const TAKE_OVER: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[2], 'ended') == 1 then return 0 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// What Redis said to a runner's append or renew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// Appended up to this sequence (for a renew: whether a cancel was asked, as 0 or 1).
    Yes(u64),
    /// Another replica took the job over (it declared this one gone).
    TakenOver,
    /// The job's records are gone (Redis restarted or was flushed): write them again.
    Lost,
}

impl Held {
    pub(super) fn of(reply: i64) -> Self {
        match reply {
            -3 => Self::Lost,
            n if n < 0 => Self::TakenOver,
            n => Self::Yes(n as u64),
        }
    }
}

/// `EVAL script` over `keys` with `args`.
pub(super) fn eval(script: &str, keys: &[&str], args: Vec<Vec<u8>>) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len()).arg(keys);
    for arg in args {
        cmd.arg(arg);
    }
    cmd
}
