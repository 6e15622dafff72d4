//! A Redis-backed counterpart of `CommittedOrders` (the original design's
//! shared dedup cache), for `benches/dedup_store.rs` only: the same lookup and
//! learn, with the same ordering, against a server several replicas would share.
//!
//! * Key: a per-run prefix, then the [`ScanKey`] packed: `4` or `6` (address
//!   family), the address bytes, the port big-endian, the service bytes.
//! * Value: the [`Order`] packed so that comparing two values bytewise compares
//!   the orders: timestamp and publish time as big-endian `i64`s with the sign
//!   bit flipped, then the message id's bytes (the fixed-width fields come
//!   first, so a shorter id sorts first, as `str`'s `Ord` has it).
//! * Lookup: `GET` (a round trip per message) or `MGET` (one per batch); the
//!   value is decoded and compared with `Order`'s `Ord`, as `is_stale` does.
//! * Learn: a newest-wins compare-and-set on the server, one Lua script run
//!   (`EVALSHA`): replicas share the store, so a read-then-write from a client
//!   could lower what another replica just raised. (moka's `committed`
//!   overwrites without comparing: it serves one process.)

use mini_scan::stages::{Order, ScanKey};
use redis::aio::MultiplexedConnection;
use std::net::IpAddr;

/// Newest-wins set of `KEYS[1]` to `ARGV[1]`; returns 1 if it wrote. Lua 5.1
/// compares strings with the server's collation (`strcoll`), not bytewise, so
/// the first differing byte is found by hand.
const LEARN: &str = r"
local new = ARGV[1]
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur == new then return 0 end
  local n = math.min(#cur, #new)
  local i = 1
  while i <= n and string.byte(cur, i) == string.byte(new, i) do i = i + 1 end
  local newer
  if i > n then newer = #new > #cur else newer = string.byte(new, i) > string.byte(cur, i) end
  if not newer then return 0 end
end
redis.call('SET', KEYS[1], new)
return 1
";

/// The newest committed order per key, in Redis.
pub struct RedisOrders {
    conn: MultiplexedConnection,
    /// `miniscan-bench:<run id>:`, so a run sees and deletes only its keys.
    prefix: String,
    /// The SHA1 of [`LEARN`], loaded once (`SCRIPT LOAD`).
    learn_sha: String,
}

impl RedisOrders {
    /// Connects (one multiplexed connection) and loads the learn script.
    pub async fn connect(url: &str, prefix: String) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let script = redis::Script::new(LEARN);
        let learn_sha: String = script.prepare_invoke().load_async(&mut conn).await?;
        Ok(Self {
            conn,
            prefix,
            learn_sha,
        })
    }

    /// Whether `order` is provably not newer than what is stored for `key`
    /// (`None`: nothing stored); one round trip.
    pub async fn is_stale(
        &mut self,
        key: &ScanKey,
        order: &Order,
    ) -> redis::RedisResult<Option<bool>> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut self.conn)
            .await?;
        Ok(value.map(|v| is_stale(order, &v)))
    }

    /// Newest-wins learn of `order` for `key`; one round trip.
    pub async fn committed(&mut self, key: &ScanKey, order: &Order) -> redis::RedisResult<()> {
        let _wrote: i64 = self.learn(key, order).query_async(&mut self.conn).await?;
        Ok(())
    }

    /// [`Self::is_stale`] for a whole batch: one `MGET`.
    pub async fn are_stale(
        &mut self,
        batch: &[(ScanKey, Order)],
    ) -> redis::RedisResult<Vec<Option<bool>>> {
        let keys: Vec<Vec<u8>> = batch.iter().map(|(k, _)| self.key(k)).collect();
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn)
            .await?;
        Ok(batch
            .iter()
            .zip(values)
            .map(|((_, order), v)| v.map(|v| is_stale(order, &v)))
            .collect())
    }

    /// [`Self::committed`] for a whole batch: one pipeline of `EVALSHA`s.
    pub async fn committed_all(&mut self, batch: &[(ScanKey, Order)]) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for (key, order) in batch {
            pipe.add_command(self.learn(key, order)).ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await
    }

    /// The server's pid (`INFO server`), for its CPU time.
    pub async fn server_pid(&mut self) -> redis::RedisResult<Option<u32>> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.conn)
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|pid| pid.trim().parse().ok()))
    }

    /// Deletes every key of this run (`SCAN` + `UNLINK`); returns how many.
    pub async fn delete_all(&mut self) -> redis::RedisResult<usize> {
        let pattern = format!("{}*", self.prefix);
        let (mut cursor, mut deleted) = (0u64, 0);
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut self.conn)
                .await?;
            if !keys.is_empty() {
                deleted += keys.len();
                redis::cmd("UNLINK")
                    .arg(keys)
                    .query_async::<()>(&mut self.conn)
                    .await?;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// `EVALSHA` of [`LEARN`] for one key.
    fn learn(&self, key: &ScanKey, order: &Order) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.learn_sha)
            .arg(1)
            .arg(self.key(key))
            .arg(encode_order(order));
        cmd
    }

    fn key(&self, key: &ScanKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.prefix.len() + 20 + key.service.len());
        out.extend_from_slice(self.prefix.as_bytes());
        match key.ip {
            IpAddr::V4(ip) => {
                out.push(b'4');
                out.extend_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.push(b'6');
                out.extend_from_slice(&ip.octets());
            }
        }
        out.extend_from_slice(&key.port.to_be_bytes());
        out.extend_from_slice(key.service.as_bytes());
        out
    }
}

/// `order <= stored`, as `CommittedOrders::is_stale` decides it.
fn is_stale(order: &Order, stored: &[u8]) -> bool {
    let committed = decode_order(stored).expect("a value this bench wrote");
    *order <= committed
}

/// An `i64` as 8 bytes whose bytewise order is the numeric order.
fn sortable(n: i64) -> [u8; 8] {
    ((n as u64) ^ (1 << 63)).to_be_bytes()
}

fn unsortable(b: &[u8]) -> i64 {
    (u64::from_be_bytes(b.try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

/// See the module doc. Only `str` methods on `message_id`, so another string
/// type (one that derefs to `str`) needs no change here.
pub fn encode_order(order: &Order) -> Vec<u8> {
    let id = order.message_id.as_bytes();
    let mut out = Vec::with_capacity(16 + id.len());
    out.extend_from_slice(&sortable(order.timestamp));
    out.extend_from_slice(&sortable(order.published_micros));
    out.extend_from_slice(id);
    out
}

/// The inverse of [`encode_order`]; `None` if `b` is not one of its values.
pub fn decode_order(b: &[u8]) -> Option<Order> {
    let (ts, rest) = b.split_at_checked(8)?;
    let (published, id) = rest.split_at_checked(8)?;
    Some(Order {
        timestamp: unsortable(ts),
        published_micros: unsortable(published),
        message_id: std::str::from_utf8(id).ok()?.into(),
    })
}
