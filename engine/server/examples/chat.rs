//! A chat room: every text message from one client reaches every client, on every worker.
//! Clients announce a name with `/nick NAME`; the room sees joins and departures.
//!
//! `cargo run --release -p ringside --example chat -- 127.0.0.1:9002`

use ringside::{CloseCode, Handler, Message, Server, WebSocket};

/// The room. Each connection's name lives in its own state (`type Conn`), so no lookup per
/// message.
struct Chat;

impl Handler for Chat {
    type Conn = String;

    fn on_open(&mut self, ws: &mut WebSocket<'_, String>) {
        let name = format!("guest-{}", ws.id());
        ws.broadcast(Message::Text(&format!("* {name} joined")));
        *ws.data_mut() = name;
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, String>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            ws.close(CloseCode::UNSUPPORTED_DATA, "text only");
            return;
        };
        if let Some(new) = text.strip_prefix("/nick ") {
            let line = format!("* {} is now {new}", ws.data());
            *ws.data_mut() = new.trim().to_owned();
            ws.broadcast(Message::Text(&line));
        } else {
            let line = format!("{}: {text}", ws.data());
            ws.broadcast(Message::Text(&line));
        }
    }

    fn on_close(&mut self, ws: &mut WebSocket<'_, String>, _code: CloseCode, _reason: &str) {
        let line = format!("* {} left", ws.data());
        ws.broadcast(Message::Text(&line));
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".into());
    // The library leaves process limits alone: room for as many connections as allowed.
    ringside::raise_fd_limit()?;
    let server = Server::builder().bind(addr)?.build(|| Chat)?;
    println!("chat on ws://{} ({})", server.local_addr(), server.backend_name());
    server.run()
}
