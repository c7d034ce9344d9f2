//! The smallest embedding: echo every message back.
//!
//! `cargo run --release -p ringside --example echo -- 127.0.0.1:9001`

use ringside::{Handler, Message, Server, WebSocket};

struct Echo;

impl Handler for Echo {
    type Conn = ();
    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let _ = ws.send(msg);
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    // The library leaves process limits alone: room for as many connections as allowed.
    ringside::raise_fd_limit()?;
    let server = Server::builder().bind(addr)?.build(|| Echo)?;
    println!("echo on ws://{} ({})", server.local_addr(), server.backend_name());
    server.run()
}
