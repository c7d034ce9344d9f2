//! Applications built on the embedding API, over real TCP on both backends. The order-entry
//! gateway example (engine/server/examples/gateway.rs) is included as a module and started
//! in-process: authentication at the upgrade, orders to its engine thread and answers back
//! through a `Sender`, fills to both owners, market data on a topic, session state in the
//! connection's data. Its protocol parser and book are tested here too, without sockets.

use std::net::SocketAddr;
use std::time::Duration;

use ringside::{Backend, CloseCode, Server, Workers};
use ringside_tests::{each_backend, Client, Seen};

#[allow(dead_code)] // the example's `main` and what only it uses
#[path = "../../engine/server/examples/gateway.rs"]
mod gateway;

use gateway::{Book, Command, Config, Fill, OrderLine, ParseError, Side, Started, Top};

/// The gateway with the example's default tokens (alice-token, bob-token) and symbols (ACME,
/// GLOBEX), on two workers so that answers cross workers. Tests drop their clients before
/// `shutdown`: clients that hang up let the graceful shutdown finish at once instead of waiting
/// out its timeout for close replies.
fn start(backend: Backend) -> Started {
    let builder = Server::builder()
        .bind("127.0.0.1:0")
        .unwrap()
        .backend(backend)
        .workers(Workers::Count(2))
        .pin(false)
        .shutdown_timeout(Duration::from_secs(2));
    gateway::start(builder, Config::default()).expect("the gateway starts")
}

/// A trader connected with the token in the `Authorization` header.
fn trader(addr: SocketAddr, token: &str) -> Client {
    let header = format!("Bearer {token}");
    Client::connect_with(addr, "/", &[], &[("Authorization", &header)]).expect("token accepted")
}

fn text(c: &mut Client) -> String {
    match c.recv().unwrap() {
        Seen::Text(t) => t,
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Sends `line` and returns the next message.
fn ask(c: &mut Client, line: &str) -> String {
    c.send_text(line).unwrap();
    text(c)
}

fn refused(result: std::io::Result<Client>) -> String {
    match result {
        Ok(_) => panic!("the upgrade was accepted"),
        Err(e) => e.to_string(),
    }
}

each_backend! {
    fn upgrades_without_a_known_token_get_401(backend) {
        let gw = start(backend);
        let addr = gw.local_addr();
        let none = refused(Client::connect(addr));
        assert!(none.contains("HTTP/1.1 401"), "{none}");
        let bad = refused(Client::connect_with(addr, "/", &[], &[("Authorization", "Bearer x")]));
        assert!(bad.contains("HTTP/1.1 401"), "{bad}");
        let basic = refused(Client::connect_with(
            addr,
            "/",
            &[],
            &[("Authorization", "Basic YWxpY2UtdG9rZW4=")],
        ));
        assert!(basic.contains("HTTP/1.1 401"), "{basic}");
        let query = refused(Client::connect_with(addr, "/?token=nope", &[], &[]));
        assert!(query.contains("HTTP/1.1 401"), "{query}");
        // Both ways in work, and the scheme is case-insensitive.
        let mut header = trader(addr, "alice-token");
        assert_eq!(ask(&mut header, "stats"), "stats account=alice orders=0 cancels=0 rejects=0 open=0");
        let mut query = Client::connect_with(addr, "/?x=1&token=bob-token", &[], &[]).unwrap();
        assert_eq!(ask(&mut query, "stats"), "stats account=bob orders=0 cancels=0 rejects=0 open=0");
        let mut lower =
            Client::connect_with(addr, "/", &[], &[("Authorization", "bearer bob-token")]).unwrap();
        assert!(ask(&mut lower, "stats").starts_with("stats account=bob "));
        drop((header, query, lower));
        gw.shutdown().unwrap();
    }
}

each_backend! {
    fn a_crossing_order_fills_both_owners_and_publishes_market_data(backend) {
        let gw = start(backend);
        let addr = gw.local_addr();
        let mut watcher = trader(addr, "alice-token");
        assert_eq!(ask(&mut watcher, "sub md.ACME"), "ok sub md.ACME");
        let mut alice = trader(addr, "alice-token");
        let mut bob = Client::connect_with(addr, "/?token=bob-token", &[], &[]).unwrap();

        // Two bids rest; the better one is first in line.
        assert_eq!(ask(&mut alice, "buy a1 ACME 10 100"), "ack a1 1");
        assert_eq!(text(&mut watcher), "book ACME 100 10 - 0");
        assert_eq!(ask(&mut alice, "buy a2 ACME 5 101"), "ack a2 2");
        assert_eq!(text(&mut watcher), "book ACME 101 5 - 0");

        // Bob sells 8 at 99: 5 at 101 (a2, done), then 3 at 100 (a1, 7 left).
        assert_eq!(ask(&mut bob, "sell b1 ACME 8 99"), "ack b1 3");
        assert_eq!(text(&mut bob), "fill b1 3 sell 5 101 3");
        assert_eq!(text(&mut bob), "fill b1 3 sell 3 100 0");
        assert_eq!(text(&mut alice), "fill a2 2 buy 5 101 0");
        assert_eq!(text(&mut alice), "fill a1 1 buy 3 100 7");
        assert_eq!(text(&mut watcher), "trade ACME 5 101");
        assert_eq!(text(&mut watcher), "trade ACME 3 100");
        assert_eq!(text(&mut watcher), "book ACME 100 7 - 0");

        // Each connection's counts are its own, and finished orders left its session.
        assert_eq!(ask(&mut alice, "stats"), "stats account=alice orders=2 cancels=0 rejects=0 open=1");
        assert_eq!(ask(&mut bob, "stats"), "stats account=bob orders=1 cancels=0 rejects=0 open=0");
        assert_eq!(ask(&mut watcher, "stats"), "stats account=alice orders=0 cancels=0 rejects=0 open=0");
        // A finished order's id may be used again.
        assert_eq!(ask(&mut bob, "sell b1 ACME 1 150"), "ack b1 4");
        assert_eq!(text(&mut watcher), "book ACME 100 7 150 1");
        drop((watcher, alice, bob));
        gw.shutdown().unwrap();
    }
}

each_backend! {
    fn cancel_takes_an_order_off_the_book(backend) {
        let gw = start(backend);
        let addr = gw.local_addr();
        let mut watcher = trader(addr, "bob-token");
        assert_eq!(ask(&mut watcher, "sub md.GLOBEX"), "ok sub md.GLOBEX");
        let mut alice = trader(addr, "alice-token");
        assert_eq!(ask(&mut alice, "sell s1 GLOBEX 4 250"), "ack s1 1");
        assert_eq!(text(&mut watcher), "book GLOBEX - 0 250 4");
        assert_eq!(ask(&mut alice, "sell s1 GLOBEX 1 250"), "reject s1 duplicate order id");
        assert_eq!(ask(&mut alice, "cancel s1"), "cancelled s1 4");
        assert_eq!(text(&mut watcher), "book GLOBEX - 0 - 0");
        assert_eq!(ask(&mut alice, "cancel s1"), "reject s1 unknown order");
        assert_eq!(ask(&mut alice, "stats"), "stats account=alice orders=1 cancels=1 rejects=2 open=0");
        // The cancelled order cannot fill: a buy at its price rests instead.
        assert_eq!(ask(&mut alice, "buy s2 GLOBEX 1 250"), "ack s2 2");
        assert_eq!(text(&mut watcher), "book GLOBEX 250 1 - 0");
        drop((watcher, alice));
        gw.shutdown().unwrap();
    }
}

each_backend! {
    fn a_closed_connections_orders_are_cancelled(backend) {
        let gw = start(backend);
        let addr = gw.local_addr();
        let mut watcher = trader(addr, "bob-token");
        assert_eq!(ask(&mut watcher, "sub md.ACME"), "ok sub md.ACME");
        let mut alice = trader(addr, "alice-token");
        assert_eq!(ask(&mut alice, "buy x ACME 3 90"), "ack x 1");
        assert_eq!(text(&mut watcher), "book ACME 90 3 - 0");
        alice.conn.close(CloseCode::NORMAL, "").unwrap();
        alice.flush().unwrap();
        assert_eq!(alice.expect_close().unwrap(), Some(1000));
        assert_eq!(text(&mut watcher), "book ACME - 0 - 0");
        // Nothing of it is left to trade against.
        let mut bob = trader(addr, "bob-token");
        assert_eq!(ask(&mut bob, "sell y ACME 3 90"), "ack y 2");
        assert_eq!(text(&mut watcher), "book ACME - 0 90 3");
        drop((watcher, alice, bob));
        gw.shutdown().unwrap();
    }
}

each_backend! {
    fn malformed_commands_are_answered_and_counted(backend) {
        let gw = start(backend);
        let mut c = trader(gw.local_addr(), "alice-token");
        for (line, reply) in [
            ("buy", "error expected CID (1 to 32 of A-Z a-z 0-9 - _)"),
            ("buy c1 ACME 0 100", "reject c1 bad quantity"),
            ("buy c1 ACME 10 -5", "reject c1 bad price"),
            ("buy c1 ACME 10 100 extra", "reject c1 expected buy|sell CID SYMBOL QTY PRICE"),
            ("buy c1 NOPE 10 100", "reject c1 unknown symbol"),
            ("sub md.NOPE", "error no such topic md.NOPE (md.SYMBOL)"),
            ("sub prices", "error no such topic prices (md.SYMBOL)"),
            ("hello", "error unknown command (buy, sell, cancel, sub, unsub, stats)"),
            ("", "error unknown command (buy, sell, cancel, sub, unsub, stats)"),
        ] {
            assert_eq!(ask(&mut c, line), reply, "for {line:?}");
        }
        c.send_binary(b"buy c1 ACME 1 1").unwrap();
        assert_eq!(text(&mut c), "error binary messages are not part of this protocol");
        // Past the gateway's message size limit (1 KiB): closed with 1009.
        c.send_text(&"x".repeat(2000)).unwrap();
        assert_eq!(c.expect_close().unwrap(), Some(1009));
        let mut d = trader(gw.local_addr(), "alice-token");
        assert_eq!(ask(&mut d, "stats"), "stats account=alice orders=0 cancels=0 rejects=0 open=0");
        drop((c, d));
        gw.shutdown().unwrap();
    }
}

each_backend! {
    fn open_orders_per_connection_are_bounded(backend) {
        let gw = start(backend);
        let mut c = trader(gw.local_addr(), "alice-token");
        for i in 0..gateway::MAX_OPEN {
            assert_eq!(ask(&mut c, &format!("buy o{i} ACME 1 {}", i + 1)), format!("ack o{i} {}", i + 1));
        }
        assert_eq!(ask(&mut c, "buy over ACME 1 1"), "reject over too many open orders");
        assert_eq!(ask(&mut c, "cancel o0"), "cancelled o0 1");
        assert_eq!(ask(&mut c, "buy over ACME 1 1"), format!("ack over {}", gateway::MAX_OPEN + 1));
        drop(c);
        gw.shutdown().unwrap();
    }
}

#[test]
fn the_parser_reads_commands_and_refuses_the_rest() {
    let order = |side, cid, symbol, qty, price| {
        Ok(Command::Order(OrderLine { side, cid, symbol, qty, price }))
    };
    assert_eq!(gateway::parse("buy c-1_Z ACME 10 250"), order(Side::Buy, "c-1_Z", "ACME", 10, 250));
    assert_eq!(
        gateway::parse("sell x B2 1000000000 1"),
        order(Side::Sell, "x", "B2", 1_000_000_000, 1)
    );
    assert_eq!(gateway::parse("cancel c1"), Ok(Command::Cancel { cid: "c1" }));
    assert_eq!(gateway::parse("sub md.ACME"), Ok(Command::Sub("md.ACME")));
    assert_eq!(gateway::parse("unsub md.ACME"), Ok(Command::Unsub("md.ACME")));
    assert_eq!(gateway::parse("stats"), Ok(Command::Stats));
    let no_cid = |reason| Err(ParseError { cid: None, reason });
    let with = |cid, reason| Err(ParseError { cid: Some(cid), reason });
    let long_cid = format!("buy {} ACME 1 1", "c".repeat(33));
    let bad_cid = "expected CID (1 to 32 of A-Z a-z 0-9 - _)";
    assert_eq!(gateway::parse(&long_cid), no_cid(bad_cid));
    assert_eq!(gateway::parse("buy c/1 ACME 1 1"), no_cid(bad_cid));
    assert_eq!(gateway::parse("buy  c1 ACME 1 1"), no_cid(bad_cid));
    assert_eq!(gateway::parse("buy c1 acme 1 1"), with("c1", "bad symbol"));
    assert_eq!(gateway::parse("buy c1 ABCDEFGHIJKLMNOPQ 1 1"), with("c1", "bad symbol"));
    assert_eq!(gateway::parse("buy c1 ACME +1 1"), with("c1", "bad quantity"));
    assert_eq!(gateway::parse("buy c1 ACME 1000000001 1"), with("c1", "bad quantity"));
    assert_eq!(gateway::parse("buy c1 ACME 99999999999999999999999 1"), with("c1", "bad quantity"));
    assert_eq!(gateway::parse("buy c1 ACME 1"), with("c1", "bad price"));
    assert_eq!(gateway::parse("buy c1 ACME 1 1.5"), with("c1", "bad price"));
    assert_eq!(
        gateway::parse("buy c1 ACME 1 1 "),
        with("c1", "expected buy|sell CID SYMBOL QTY PRICE")
    );
    assert_eq!(gateway::parse("cancel"), no_cid("expected cancel CID"));
    assert_eq!(gateway::parse("cancel a b"), no_cid("too many words"));
    assert_eq!(gateway::parse("stats now"), no_cid("too many words"));
    assert_eq!(gateway::parse("sub"), no_cid("expected a topic"));
    assert_eq!(gateway::parse("BUY c1 ACME 1 1").unwrap_err().cid, None);
    // Any bytes at all: an answer, never a panic.
    for line in ["\u{0}", "buy \u{fffd} ACME 1 1", " ", "cancel \u{1f600}", "sell c1 ACME 1 ١"] {
        assert!(gateway::parse(line).is_err(), "{line:?}");
    }
}

#[test]
fn the_book_matches_by_price_then_time() {
    let mut book: Book<&str> = Book::default();
    assert_eq!(book.submit(Side::Sell, 1, "s1", 5, 102), (vec![], 5));
    assert_eq!(book.submit(Side::Sell, 2, "s2", 5, 101), (vec![], 5));
    assert_eq!(book.submit(Side::Sell, 3, "s3", 5, 101), (vec![], 5));
    assert_eq!(book.top(), Top { bid: None, ask: Some((101, 10)) });
    // A buy at 101 for 7: s2 (older) in full, then 2 of s3; 102 is above its limit.
    let fill = |maker, maker_oid, maker_left, qty, price| Fill {
        maker,
        maker_oid,
        maker_left,
        qty,
        price,
    };
    let (fills, left) = book.submit(Side::Buy, 4, "b1", 7, 101);
    assert_eq!(fills, vec![fill("s2", 2, 0, 5, 101), fill("s3", 3, 3, 2, 101)]);
    assert_eq!(left, 0);
    assert_eq!(book.top(), Top { bid: None, ask: Some((101, 3)) });
    // A buy above the whole book sweeps it and rests the rest at its own price.
    let (fills, left) = book.submit(Side::Buy, 5, "b2", 10, 105);
    assert_eq!(fills, vec![fill("s3", 3, 0, 3, 101), fill("s1", 1, 0, 5, 102)]);
    assert_eq!(left, 2);
    assert_eq!(book.top(), Top { bid: Some((105, 2)), ask: None });
    // Cancel: the quantity left, once; unknown ids and prices are None.
    assert_eq!(book.submit(Side::Buy, 6, "b3", 4, 105), (vec![], 4));
    assert_eq!(book.cancel(Side::Buy, 105, 5), Some(2));
    assert_eq!(book.cancel(Side::Buy, 105, 5), None);
    assert_eq!(book.cancel(Side::Buy, 104, 6), None);
    assert_eq!(book.cancel(Side::Sell, 105, 6), None);
    assert_eq!(book.top(), Top { bid: Some((105, 4)), ask: None });
    // A sell below the best bid trades at the bid's price.
    let (fills, left) = book.submit(Side::Sell, 7, "s4", 1, 1);
    assert_eq!(fills, vec![fill("b3", 6, 3, 1, 105)]);
    assert_eq!(left, 0);
    assert_eq!(book.cancel(Side::Buy, 105, 6), Some(3));
    assert_eq!(book.top(), Top::default());
}
