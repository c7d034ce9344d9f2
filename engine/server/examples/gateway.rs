//! An order-entry gateway: clients authenticate at the upgrade, send orders as text commands,
//! and get acks and fills from a matching engine that runs on a thread of its own; trades and
//! the top of each book go out as market data on conflated topics.
//!
//! ```sh
//! cargo run --release -p ringside --example gateway -- 127.0.0.1:9004
//! # options: --tokens alice-token=alice,bob-token=bob  --symbols ACME,GLOBEX
//!
//! # two traders and a market-data watcher, with websocat (`apt-get install websocat`, or
//! # `cargo install websocat`):
//! websocat -H 'Authorization: Bearer alice-token' ws://127.0.0.1:9004/
//! websocat 'ws://127.0.0.1:9004/?token=bob-token'
//! websocat 'ws://127.0.0.1:9004/?token=alice-token'     # then: sub md.ACME
//! # or Python's client: python3 -m websockets 'ws://127.0.0.1:9004/?token=bob-token'
//! ```
//!
//! Without a known token (an `Authorization: Bearer <token>` header, or `?token=<token>` in the
//! URL for clients that cannot set headers, such as browsers) the upgrade is refused with 401.
//!
//! | client sends | the gateway answers |
//! |---|---|
//! | `buy CID SYMBOL QTY PRICE` | `ack CID OID`, then a `fill CID OID buy QTY PRICE LEFT` for each match |
//! | `sell CID SYMBOL QTY PRICE` | the same, with `sell` |
//! | `cancel CID` | `cancelled CID LEFT` (the quantity that was still open) |
//! | `sub md.SYMBOL` / `unsub md.SYMBOL` | `ok sub md.SYMBOL` / `ok unsub md.SYMBOL` |
//! | `stats` | `stats account=A orders=N cancels=N rejects=N open=N` (this connection's) |
//!
//! `CID` is the client's order id: 1 to 32 letters, digits, `-` or `_`, unique among the
//! connection's open orders. `QTY` and `PRICE` are whole numbers (a price in ticks), at least 1.
//! An order the gateway refuses is answered `reject CID <reason>`; a line it cannot read,
//! `error <reason>`. Resting orders fill at their own price, best price first, then oldest
//! first; each side of a fill gets its `fill` on its own connection. A connection's resting
//! orders are cancelled when it closes.
//!
//! Topic `md.SYMBOL` carries `trade SYMBOL QTY PRICE` and `book SYMBOL BID BIDQTY ASK ASKQTY`
//! (`-` and `0` for an empty side). It is conflated: a subscriber that falls behind gets the
//! latest book and the latest trade, not a backlog.
//!
//! The shape: the handler (one per worker) authenticates in `on_upgrade` and keeps the session
//! (account, counters, open order ids) in the connection's data; it validates each command and
//! hands orders to the engine thread over a channel. The engine owns the books and answers
//! through the server's [`Sender`] (acks, fills: to any connection, on any worker) and
//! publishes market data; it gathers what each burst of requests says in a [`Batch`], handed
//! to the workers at once. When an order is done it updates the owner's session with a
//! deferred closure (`defer`), ahead of the message that says so, so a client never sees
//! `stats` disagree with a fill it has read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ringside::{
    Batch, Builder, ConnId, Handler, Message, Sender, Server, ServerHandle, SlowConsumer,
    TopicPolicy, Upgrade, Upgrading, WebSocket,
};

/// Open orders one connection may have: bounds what a session and the engine hold for it.
pub const MAX_OPEN: usize = 256;
/// Longest client order id.
pub const MAX_CID: usize = 32;
/// Largest quantity and price accepted.
pub const MAX_QTY: u64 = 1_000_000_000;
pub const MAX_PRICE: u64 = 1_000_000_000_000;

/// Requests the engine handles before it hands their answers over, at most: bounds the delay a
/// steady stream could add to the first answer of a burst.
const BURST: usize = 256;

/// Conflation keys on a symbol's topic: its latest book and its latest trade.
const KEY_BOOK: u64 = 0;
const KEY_TRADE: u64 = 1;

fn main() -> io::Result<()> {
    let (listen, config) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("gateway: {e}");
            eprintln!(
                "usage: gateway [ADDR] [--tokens TOKEN=ACCOUNT,...] [--symbols SYM,...]\n\
                 default: 127.0.0.1:9004, tokens alice-token=alice,bob-token=bob, \
                 symbols ACME,GLOBEX"
            );
            std::process::exit(2);
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    // The library leaves process limits alone: room for as many connections as allowed.
    ringside::raise_fd_limit()?;
    let symbols = config.symbols.join(", ");
    let gateway = start(Server::builder().bind(listen)?, config)?;
    println!("gateway on ws://{} ({}), symbols {symbols}", gateway.local_addr(), gateway.backend());
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    gateway.shutdown()
}

/// `[ADDR] [--tokens T=A,...] [--symbols S,...]`.
fn parse_args(args: impl Iterator<Item = String>) -> Result<(SocketAddr, Config), String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 9004));
    let mut config = Config::default();
    let mut args = args;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--tokens" => {
                config.tokens = value("--tokens")?
                    .split(',')
                    .map(|pair| match pair.split_once('=') {
                        Some((t, a)) if !t.is_empty() && !a.is_empty() => {
                            Ok((t.to_owned(), a.to_owned()))
                        }
                        _ => Err(format!("--tokens takes TOKEN=ACCOUNT pairs, got {pair:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--symbols" => {
                config.symbols = value("--symbols")?.split(',').map(str::to_owned).collect();
                if let Some(bad) = config.symbols.iter().find(|s| !is_symbol(s)) {
                    return Err(format!("a symbol is 1 to 16 of A-Z, 0-9, got {bad:?}"));
                }
            }
            "--help" | "-h" => return Err("help".into()),
            addr if !addr.starts_with('-') => {
                listen = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    Ok((listen, config))
}

/// Who may connect and what they may trade.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bearer token to account name.
    pub tokens: HashMap<String, String>,
    /// The symbols that have a book.
    pub symbols: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tokens: [("alice-token", "alice"), ("bob-token", "bob")]
                .into_iter()
                .map(|(t, a)| (t.to_owned(), a.to_owned()))
                .collect(),
            symbols: vec!["ACME".into(), "GLOBEX".into()],
        }
    }
}

/// A gateway that is serving: its server and its engine thread.
#[derive(Debug)]
pub struct Started {
    handle: ServerHandle,
    engine: JoinHandle<()>,
    to_engine: crossbeam_channel::Sender<Request>,
}

impl Started {
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    pub fn backend(&self) -> &'static str {
        self.handle.backend()
    }

    /// Closes every connection (1001), then stops the engine once it has cancelled their orders.
    pub fn shutdown(self) -> io::Result<()> {
        let result = self.handle.shutdown();
        let _ = self.to_engine.send(Request::Stop);
        let _ = self.engine.join();
        result
    }
}

/// Starts the gateway on `builder` (bound, workers and backend chosen by the caller): adds the
/// market-data topic policy and a message size limit, spawns the server, then the engine thread
/// with the server's [`Sender`].
pub fn start(builder: Builder, config: Config) -> io::Result<Started> {
    let (to_engine, requests) = crossbeam_channel::unbounded();
    let tokens: Arc<HashMap<String, Arc<str>>> =
        Arc::new(config.tokens.into_iter().map(|(t, a)| (t, Arc::from(a))).collect());
    let symbols: Arc<[Box<str>]> = config.symbols.iter().map(|s| s.as_str().into()).collect();
    let running = builder
        .topic("md.*", TopicPolicy { slow_consumer: SlowConsumer::Conflate, limit: 64 << 10 })
        .max_message_size(1 << 10)
        .build({
            let to_engine = to_engine.clone();
            let symbols = Arc::clone(&symbols);
            move || Gateway {
                tokens: Arc::clone(&tokens),
                symbols: Arc::clone(&symbols),
                engine: to_engine.clone(),
            }
        })?;
    let handle = running.spawn()?;
    let sender = handle.sender();
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || Engine::new(&symbols, sender).run(&requests))?;
    Ok(Started { handle, engine, to_engine })
}

// ---------------------------------------------------------------------------------------------
// The session, on the workers.

/// One connection's state, made at the upgrade.
#[derive(Debug, Default)]
pub struct Session {
    pub account: Arc<str>,
    /// Orders sent to the engine.
    pub orders: u64,
    /// Cancels sent to the engine.
    pub cancels: u64,
    /// Commands the gateway refused.
    pub rejects: u64,
    /// Open orders by client order id, and whether a cancel is on its way.
    pub open: HashMap<Box<str>, bool>,
}

/// The handler: one per worker.
#[derive(Debug)]
pub struct Gateway {
    tokens: Arc<HashMap<String, Arc<str>>>,
    symbols: Arc<[Box<str>]>,
    engine: crossbeam_channel::Sender<Request>,
}

impl Handler for Gateway {
    type Conn = Session;

    fn on_upgrade(&mut self, request: &Upgrading<'_>) -> Upgrade<Session> {
        // A real gateway would look tokens up by a hash, in constant time; a map is the idea.
        match bearer_token(request).and_then(|t| self.tokens.get(t)) {
            Some(account) => {
                Upgrade::Accept(Session { account: Arc::clone(account), ..Session::default() })
            }
            None => Upgrade::Reject(401),
        }
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Session>, msg: Message<'_>) {
        let Message::Text(line) = msg else {
            ws.data_mut().rejects += 1;
            let _ = ws.send_text("error binary messages are not part of this protocol");
            return;
        };
        let reply = match parse(line) {
            Ok(Command::Order(order)) => self.order(ws, order),
            Ok(Command::Cancel { cid }) => self.cancel(ws, cid),
            Ok(Command::Sub(topic)) => match self.market_data(topic) {
                Ok(()) => match ws.subscribe(topic) {
                    Ok(_) => Some(format!("ok sub {topic}")),
                    Err(e) => Some(format!("error {e}")),
                },
                Err(e) => Some(e),
            },
            Ok(Command::Unsub(topic)) => {
                ws.unsubscribe(topic);
                Some(format!("ok unsub {topic}"))
            }
            Ok(Command::Stats) => {
                let s = ws.data();
                Some(format!(
                    "stats account={} orders={} cancels={} rejects={} open={}",
                    s.account,
                    s.orders,
                    s.cancels,
                    s.rejects,
                    s.open.len()
                ))
            }
            Err(e) => {
                ws.data_mut().rejects += 1;
                Some(match e.cid {
                    Some(cid) => format!("reject {cid} {}", e.reason),
                    None => format!("error {}", e.reason),
                })
            }
        };
        if let Some(reply) = reply {
            let _ = ws.send_text(&reply);
        }
    }

    fn on_close(&mut self, ws: &mut WebSocket<'_, Session>, _code: ringside::CloseCode, _: &str) {
        if !ws.data().open.is_empty() {
            let _ = self.engine.send(Request::Gone(ws.id()));
        }
    }
}

impl Gateway {
    /// Checks an order against the session, records it and hands it to the engine; the answer
    /// comes from the engine unless the gateway refuses it here.
    fn order(&mut self, ws: &mut WebSocket<'_, Session>, o: OrderLine<'_>) -> Option<String> {
        let conn = ws.id();
        let session = ws.data_mut();
        let refusal = if !self.symbols.iter().any(|s| **s == *o.symbol) {
            Some("unknown symbol")
        } else if session.open.contains_key(o.cid) {
            Some("duplicate order id")
        } else if session.open.len() >= MAX_OPEN {
            Some("too many open orders")
        } else {
            None
        };
        if let Some(reason) = refusal {
            session.rejects += 1;
            return Some(format!("reject {} {reason}", o.cid));
        }
        session.open.insert(o.cid.into(), false);
        session.orders += 1;
        let order = Order {
            conn,
            cid: o.cid.into(),
            side: o.side,
            symbol: o.symbol.into(),
            qty: o.qty,
            price: o.price,
        };
        // Never fails while the server runs: the engine stops after the workers.
        let _ = self.engine.send(Request::Order(order));
        None
    }

    fn cancel(&mut self, ws: &mut WebSocket<'_, Session>, cid: &str) -> Option<String> {
        let conn = ws.id();
        let session = ws.data_mut();
        let refusal = match session.open.get_mut(cid) {
            None => Some("unknown order"),
            Some(true) => Some("cancel already sent"),
            Some(pending) => {
                *pending = true;
                None
            }
        };
        if let Some(reason) = refusal {
            session.rejects += 1;
            return Some(format!("reject {cid} {reason}"));
        }
        session.cancels += 1;
        let _ = self.engine.send(Request::Cancel { conn, cid: cid.into() });
        None
    }

    /// Whether `topic` is the market data of a known symbol.
    fn market_data(&self, topic: &str) -> Result<(), String> {
        match topic.strip_prefix("md.") {
            Some(symbol) if self.symbols.iter().any(|s| **s == *symbol) => Ok(()),
            _ => Err(format!("error no such topic {topic} (md.SYMBOL)")),
        }
    }
}

/// The token of `Authorization: Bearer <token>`, else of `?token=<token>`.
pub fn bearer_token<'a>(request: &Upgrading<'a>) -> Option<&'a str> {
    let header = request.header_values("authorization").next().and_then(|v| {
        let v = std::str::from_utf8(v).ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        // RFC 9110 section 11.1: the scheme is case-insensitive.
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start())
    });
    header.or_else(|| request.query()?.split('&').find_map(|pair| pair.strip_prefix("token=")))
}

// ---------------------------------------------------------------------------------------------
// The protocol.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Buy,
    Sell,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

/// A parsed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command<'a> {
    Order(OrderLine<'a>),
    Cancel { cid: &'a str },
    Sub(&'a str),
    Unsub(&'a str),
    Stats,
}

/// `buy|sell CID SYMBOL QTY PRICE`, as parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderLine<'a> {
    pub side: Side,
    pub cid: &'a str,
    pub symbol: &'a str,
    pub qty: u64,
    pub price: u64,
}

/// Why a line was refused, and the order it named if that much was readable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError<'a> {
    pub cid: Option<&'a str>,
    pub reason: &'static str,
}

/// Parses one command line. Allocates nothing; any input gives a command or an error.
pub fn parse(line: &str) -> Result<Command<'_>, ParseError<'_>> {
    let error = |reason| ParseError { cid: None, reason };
    let mut words = line.split(' ');
    let verb = words.next().unwrap_or_default();
    let mut next = || words.next();
    let command = match verb {
        "buy" | "sell" => {
            let side = if verb == "buy" { Side::Buy } else { Side::Sell };
            let cid = next()
                .filter(|c| is_cid(c))
                .ok_or(error("expected CID (1 to 32 of A-Z a-z 0-9 - _)"))?;
            let reject = |reason| ParseError { cid: Some(cid), reason };
            let symbol = next().filter(|s| is_symbol(s)).ok_or(reject("bad symbol"))?;
            let qty = number(next(), MAX_QTY).ok_or(reject("bad quantity"))?;
            let price = number(next(), MAX_PRICE).ok_or(reject("bad price"))?;
            if next().is_some() {
                return Err(reject("expected buy|sell CID SYMBOL QTY PRICE"));
            }
            Command::Order(OrderLine { side, cid, symbol, qty, price })
        }
        "cancel" => {
            let cid = next().filter(|c| is_cid(c)).ok_or(error("expected cancel CID"))?;
            Command::Cancel { cid }
        }
        "sub" | "unsub" => {
            let topic = next().filter(|t| !t.is_empty()).ok_or(error("expected a topic"))?;
            if verb == "sub" {
                Command::Sub(topic)
            } else {
                Command::Unsub(topic)
            }
        }
        "stats" => Command::Stats,
        _ => return Err(error("unknown command (buy, sell, cancel, sub, unsub, stats)")),
    };
    match words.next() {
        None => Ok(command),
        Some(_) => Err(error("too many words")),
    }
}

fn is_cid(s: &str) -> bool {
    (1..=MAX_CID).contains(&s.len())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_symbol(s: &str) -> bool {
    (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

/// A decimal in `1..=max` (digits only: no sign, no spaces).
fn number(word: Option<&str>, max: u64) -> Option<u64> {
    let word = word.filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()))?;
    word.parse().ok().filter(|n| (1..=max).contains(n))
}

// ---------------------------------------------------------------------------------------------
// The book: price-time priority, no I/O.

/// An order waiting in a book. `O` says whose it is (the engine: connection and client id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resting<O> {
    pub oid: u64,
    pub owner: O,
    pub qty: u64,
}

/// A match between an incoming order and a resting one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill<O> {
    /// The resting order's owner and id, and what it has left after this fill.
    pub maker: O,
    pub maker_oid: u64,
    pub maker_left: u64,
    pub qty: u64,
    /// The resting order's price.
    pub price: u64,
}

/// The best price and the quantity at it, on each side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Top {
    pub bid: Option<(u64, u64)>,
    pub ask: Option<(u64, u64)>,
}

/// One symbol's book.
#[derive(Debug)]
pub struct Book<O> {
    bids: BTreeMap<u64, VecDeque<Resting<O>>>,
    asks: BTreeMap<u64, VecDeque<Resting<O>>>,
}

impl<O> Default for Book<O> {
    fn default() -> Self {
        Book { bids: BTreeMap::new(), asks: BTreeMap::new() }
    }
}

impl<O: Clone> Book<O> {
    /// Matches an incoming order against the other side, best price first and oldest first at
    /// a price; what is left rests. Returns the fills and the quantity left (resting).
    pub fn submit(
        &mut self,
        side: Side,
        oid: u64,
        owner: O,
        mut qty: u64,
        price: u64,
    ) -> (Vec<Fill<O>>, u64) {
        let mut fills = Vec::new();
        let other = match side {
            Side::Buy => &mut self.asks,
            Side::Sell => &mut self.bids,
        };
        while qty > 0 {
            let best = match side {
                Side::Buy => other.first_entry().filter(|e| *e.key() <= price),
                Side::Sell => other.last_entry().filter(|e| *e.key() >= price),
            };
            let Some(mut level) = best else { break };
            let at = *level.key();
            let queue = level.get_mut();
            while qty > 0 {
                let Some(maker) = queue.front_mut() else { break };
                let traded = qty.min(maker.qty);
                qty -= traded;
                maker.qty -= traded;
                fills.push(Fill {
                    maker: maker.owner.clone(),
                    maker_oid: maker.oid,
                    maker_left: maker.qty,
                    qty: traded,
                    price: at,
                });
                if maker.qty == 0 {
                    queue.pop_front();
                }
            }
            if queue.is_empty() {
                level.remove();
            }
        }
        if qty > 0 {
            let own = match side {
                Side::Buy => &mut self.bids,
                Side::Sell => &mut self.asks,
            };
            own.entry(price).or_default().push_back(Resting { oid, owner, qty });
        }
        (fills, qty)
    }

    /// Removes resting order `oid` (of `side`, at `price`); returns the quantity it had left.
    pub fn cancel(&mut self, side: Side, price: u64, oid: u64) -> Option<u64> {
        let levels = match side {
            Side::Buy => &mut self.bids,
            Side::Sell => &mut self.asks,
        };
        let queue = levels.get_mut(&price)?;
        let at = queue.iter().position(|r| r.oid == oid)?;
        let removed = queue.remove(at)?;
        if queue.is_empty() {
            levels.remove(&price);
        }
        Some(removed.qty)
    }

    pub fn top(&self) -> Top {
        let level = |(price, q): (&u64, &VecDeque<Resting<O>>)| {
            (*price, q.iter().map(|r| r.qty).sum::<u64>())
        };
        Top {
            bid: self.bids.last_key_value().map(level),
            ask: self.asks.first_key_value().map(level),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The engine thread.

/// What the workers ask of the engine.
#[derive(Debug)]
pub enum Request {
    Order(Order),
    Cancel {
        conn: ConnId,
        cid: Box<str>,
    },
    /// The connection closed: cancel its resting orders.
    Gone(ConnId),
    Stop,
}

#[derive(Debug)]
pub struct Order {
    pub conn: ConnId,
    pub cid: Box<str>,
    pub side: Side,
    pub symbol: Box<str>,
    pub qty: u64,
    pub price: u64,
}

/// Whose a resting order is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    conn: ConnId,
    cid: Box<str>,
}

/// Where a resting order is, to cancel it.
#[derive(Debug, Clone, Copy)]
struct Place {
    book: usize,
    side: Side,
    price: u64,
    oid: u64,
}

struct Engine {
    symbols: Vec<Box<str>>,
    books: Vec<Book<Owner>>,
    /// The top of each book as last published.
    published: Vec<Top>,
    /// Resting orders by owner: ordered so that a connection's orders are one range.
    resting: BTreeMap<(ConnId, Box<str>), Place>,
    next_oid: u64,
    /// What the current burst of requests says to the workers, handed over at its end.
    out: Batch,
    text: String,
}

impl Engine {
    fn new(symbols: &[Box<str>], sender: Sender) -> Self {
        Engine {
            symbols: symbols.to_vec(),
            books: symbols.iter().map(|_| Book::default()).collect(),
            published: vec![Top::default(); symbols.len()],
            resting: BTreeMap::new(),
            next_oid: 1,
            out: sender.batch(),
            text: String::with_capacity(128),
        }
    }

    /// Serves requests in bursts: everything waiting in the channel (up to [`BURST`]) is
    /// handled, then what it says to the workers leaves in one hand-over per worker.
    fn run(mut self, requests: &crossbeam_channel::Receiver<Request>) {
        while let Ok(first) = requests.recv() {
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(request) = next {
                match request {
                    Request::Order(order) => self.order(order),
                    Request::Cancel { conn, cid } => self.cancel(conn, cid),
                    Request::Gone(conn) => self.gone(conn),
                    Request::Stop => return,
                }
                handled += 1;
                next = if handled < BURST { requests.try_recv().ok() } else { None };
            }
            self.out.flush();
        }
    }

    fn order(&mut self, o: Order) {
        // The workers only send known symbols.
        let Some(book) = self.symbols.iter().position(|s| *s == o.symbol) else { return };
        let oid = self.next_oid;
        self.next_oid += 1;
        self.say(o.conn, format_args!("ack {} {oid}", o.cid));
        let owner = Owner { conn: o.conn, cid: o.cid };
        let (fills, left) = self.books[book].submit(o.side, oid, owner.clone(), o.qty, o.price);
        let mut remaining = o.qty;
        for f in &fills {
            remaining -= f.qty;
            let symbol = &self.symbols[book];
            self.text.clear();
            let _ = write!(self.text, "trade {symbol} {} {}", f.qty, f.price);
            self.out.publish_keyed(&format!("md.{symbol}"), KEY_TRADE, Message::Text(&self.text));
            if f.maker_left == 0 {
                self.resting.remove(&(f.maker.conn, f.maker.cid.clone()));
                self.done(&f.maker);
            }
            let maker_side = match o.side {
                Side::Buy => Side::Sell,
                Side::Sell => Side::Buy,
            };
            self.say(
                f.maker.conn,
                format_args!(
                    "fill {} {} {} {} {} {}",
                    f.maker.cid,
                    f.maker_oid,
                    maker_side.name(),
                    f.qty,
                    f.price,
                    f.maker_left
                ),
            );
            if remaining == 0 {
                self.done(&owner);
            }
            self.say(
                o.conn,
                format_args!(
                    "fill {} {oid} {} {} {} {remaining}",
                    owner.cid,
                    o.side.name(),
                    f.qty,
                    f.price
                ),
            );
        }
        if left > 0 {
            let place = Place { book, side: o.side, price: o.price, oid };
            self.resting.insert((owner.conn, owner.cid), place);
        }
        self.publish_top(book);
    }

    fn cancel(&mut self, conn: ConnId, cid: Box<str>) {
        let owner = Owner { conn, cid };
        match self.resting.remove(&(owner.conn, owner.cid.clone())) {
            Some(p) => {
                let left = self.books[p.book].cancel(p.side, p.price, p.oid).unwrap_or(0);
                self.done(&owner);
                self.say(conn, format_args!("cancelled {} {left}", owner.cid));
                self.publish_top(p.book);
            }
            // It filled while the cancel was on its way: the fill has told the client.
            None => self.say(conn, format_args!("reject {} not open", owner.cid)),
        }
    }

    fn gone(&mut self, conn: ConnId) {
        let mine: Vec<(ConnId, Box<str>)> = self
            .resting
            .range((conn, Box::<str>::from(""))..)
            .take_while(|((c, _), _)| *c == conn)
            .map(|(k, _)| k.clone())
            .collect();
        let mut touched = Vec::new();
        for key in mine {
            if let Some(p) = self.resting.remove(&key) {
                self.books[p.book].cancel(p.side, p.price, p.oid);
                touched.push(p.book);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for book in touched {
            self.publish_top(book);
        }
    }

    /// Takes a finished order off its owner's session, on the owner's worker. Sent before the
    /// message that finishes it, and commands to a worker run in order, so the session has
    /// forgotten the order by the time the client reads that message.
    fn done(&mut self, owner: &Owner) {
        let (conn, cid) = (owner.conn, owner.cid.clone());
        let _ = self.out.defer::<Gateway>(conn.worker(), move |_, ctx| {
            if let Some(session) = ctx.data_mut(conn) {
                session.open.remove(&cid);
            }
        });
    }

    fn say(&mut self, conn: ConnId, line: std::fmt::Arguments<'_>) {
        self.text.clear();
        let _ = self.text.write_fmt(line);
        // A closed connection is not an error: its orders are cancelled when `Gone` arrives.
        self.out.send(conn, Message::Text(&self.text));
    }

    fn publish_top(&mut self, book: usize) {
        let top = self.books[book].top();
        if top == self.published[book] {
            return;
        }
        self.published[book] = top;
        let side = |s: Option<(u64, u64)>| match s {
            Some((price, qty)) => format!("{price} {qty}"),
            None => "- 0".to_owned(),
        };
        let symbol = &self.symbols[book];
        self.text.clear();
        let _ = write!(self.text, "book {symbol} {} {}", side(top.bid), side(top.ask));
        self.out.publish_keyed(&format!("md.{symbol}"), KEY_BOOK, Message::Text(&self.text));
    }
}
