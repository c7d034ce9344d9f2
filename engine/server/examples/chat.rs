//! A chat room: every text message from one client reaches every client, on every worker.
//! Clients announce a name with `/nick NAME`; the room sees joins and departures.
//!
//! `cargo run --release -p ringside --example chat -- 127.0.0.1:9002`

use std::collections::HashMap;

use ringside::{CloseCode, ConnId, Handler, Message, Server, WebSocket};

#[derive(Default)]
struct Chat {
    /// Names of this worker's clients (each worker has its own handler).
    names: HashMap<ConnId, String>,
}

impl Handler for Chat {
    fn on_open(&mut self, ws: &mut WebSocket<'_>) {
        let name = format!("guest-{}-{}", ws.id().worker, ws.id().slot);
        ws.broadcast(Message::Text(&format!("* {name} joined")));
        self.names.insert(ws.id(), name);
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_>, msg: Message<'_>) {
        let Message::Text(text) = msg else {
            ws.close(CloseCode::UNSUPPORTED_DATA, "text only");
            return;
        };
        let name = self.names.entry(ws.id()).or_default();
        if let Some(new) = text.strip_prefix("/nick ") {
            let line = format!("* {name} is now {new}");
            *name = new.trim().to_owned();
            ws.broadcast(Message::Text(&line));
        } else {
            ws.broadcast(Message::Text(&format!("{name}: {text}")));
        }
    }

    fn on_close(&mut self, ws: &mut WebSocket<'_>, _code: CloseCode, _reason: &str) {
        if let Some(name) = self.names.remove(&ws.id()) {
            ws.broadcast(Message::Text(&format!("* {name} left")));
        }
    }
}

fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9002".into());
    let server = Server::builder().bind(addr)?.build(Chat::default)?;
    println!("chat on ws://{} ({})", server.local_addr(), server.backend_name());
    server.run()
}
