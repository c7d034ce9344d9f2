//! A game server: players join rooms, send inputs, and get their own view of the room at every
//! tick (30 Hz); a player silent for 30 s is dropped by a connection timer.
//!
//! `cargo run --release -p ringside --example game -- 127.0.0.1:9003`
//!
//! Protocol (text messages):
//! - `join ROOM NAME`: enter ROOM (leaving the previous one) as NAME; answered `joined ROOM`.
//! - `move DX DY`: move by (DX, DY), integers in -10..=10; applied at the next tick.
//! - every tick, each player in a room receives `state TICK you X Y | NAME X Y; NAME X Y; ...`
//!   (its own position first, then the others').
//!
//! Shape: a room lives on one worker, its home (a hash of its name), so its state needs no lock.
//! A player's connection may be on another worker: its joins, inputs and departure travel to the
//! room's home with `Sender::defer`, and the home worker's `on_tick` sends each player its view
//! with `Ctx::send` (same worker) or `Sender::send` (another worker). Each player's name, room
//! and last input time live in its connection data.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ringside::{
    Builder, CloseCode, ConnId, Ctx, Handler, Message, SendStatus, Sender, Server, WebSocket,
};

/// Timer token of the idle check.
const IDLE: u64 = 1;

/// The game's knobs.
#[derive(Debug, Clone, Copy)]
pub struct GameConfig {
    /// How often rooms advance and players get their view.
    pub tick: Duration,
    /// A player silent this long is dropped.
    pub idle: Duration,
}

impl Default for GameConfig {
    fn default() -> Self {
        GameConfig { tick: Duration::from_millis(33), idle: Duration::from_secs(30) }
    }
}

/// One player's connection state.
#[derive(Debug)]
pub struct Player {
    name: String,
    room: Option<String>,
    last_input: Instant,
}

impl Default for Player {
    fn default() -> Self {
        Player { name: String::new(), room: None, last_input: Instant::now() }
    }
}

/// A room at its home worker.
#[derive(Debug, Default)]
struct Room {
    tick: u64,
    /// Players in join order.
    players: Vec<InRoom>,
}

/// A player as its room sees it.
#[derive(Debug)]
struct InRoom {
    id: ConnId,
    name: String,
    at: (i32, i32),
    /// The moves received since the last tick, applied at the next.
    moving: (i32, i32),
}

/// One per worker: the rooms whose home it is.
#[derive(Debug)]
pub struct Game {
    config: GameConfig,
    rooms: HashMap<String, Room>,
    sender: Option<Sender>,
}

impl Game {
    pub fn new(config: GameConfig) -> Self {
        Game { config, rooms: HashMap::new(), sender: None }
    }

    /// The worker a room lives on.
    fn home(room: &str, workers: usize) -> usize {
        let hash = room.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        (hash % workers as u64) as usize
    }

    /// Runs `f` on the room's home worker: here at once if this is it.
    fn at_home(
        &mut self,
        ws: &WebSocket<'_, Player>,
        room: &str,
        f: impl FnOnce(&mut Game) + Send + 'static,
    ) {
        let sender = self.sender.get_or_insert_with(|| ws.sender()).clone();
        let home = Game::home(room, sender.workers());
        if home == ws.worker() {
            f(self);
        } else {
            let _ = sender.defer::<Game>(home, move |game, _ctx| f(game));
        }
    }

    fn join(&mut self, room: String, id: ConnId, name: String) {
        let r = self.rooms.entry(room).or_default();
        r.players.retain(|p| p.id != id);
        r.players.push(InRoom { id, name, at: (0, 0), moving: (0, 0) });
    }

    fn leave(&mut self, room: &str, id: ConnId) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.players.retain(|p| p.id != id);
            if r.players.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    fn input(&mut self, room: &str, id: ConnId, dx: i32, dy: i32) {
        let room = self.rooms.get_mut(room);
        if let Some(p) = room.and_then(|r| r.players.iter_mut().find(|p| p.id == id)) {
            p.moving = (p.moving.0 + dx, p.moving.1 + dy);
        }
    }

    fn leave_current(&mut self, ws: &mut WebSocket<'_, Player>) {
        if let Some(old) = ws.data_mut().room.take() {
            let id = ws.id();
            let room = old.clone();
            self.at_home(ws, &old, move |game| game.leave(&room, id));
        }
    }
}

impl Handler for Game {
    type Conn = Player;

    fn on_open(&mut self, ws: &mut WebSocket<'_, Player>) {
        ws.data_mut().last_input = Instant::now();
        ws.set_timer(self.config.idle, IDLE);
    }

    fn on_message(&mut self, ws: &mut WebSocket<'_, Player>, msg: Message<'_>) {
        let Message::Text(line) = msg else {
            ws.close(CloseCode::UNSUPPORTED_DATA, "text only");
            return;
        };
        ws.data_mut().last_input = Instant::now();
        let mut words = line.split(' ');
        match (words.next(), words.next(), words.next(), words.next()) {
            (Some("join"), Some(room), Some(name), None)
                if !room.is_empty() && !name.is_empty() =>
            {
                self.leave_current(ws);
                let (room, name, id) = (room.to_owned(), name.to_owned(), ws.id());
                ws.data_mut().name.clone_from(&name);
                ws.data_mut().room = Some(room.clone());
                let home_room = room.clone();
                self.at_home(ws, &room, move |game| game.join(home_room, id, name));
                let _ = ws.send_text(&format!("joined {room}"));
            }
            (Some("move"), Some(dx), Some(dy), None) => {
                let step = |s: &str| s.parse::<i32>().ok().filter(|v| v.abs() <= 10);
                let (Some(dx), Some(dy)) = (step(dx), step(dy)) else {
                    let _ = ws.send_text("error move takes two integers in -10..=10");
                    return;
                };
                let Some(room) = ws.data().room.clone() else {
                    let _ = ws.send_text("error join a room first");
                    return;
                };
                let id = ws.id();
                let home_room = room.clone();
                self.at_home(ws, &room, move |game| game.input(&home_room, id, dx, dy));
            }
            _ => {
                let _ = ws.send_text("error unknown command (join ROOM NAME, move DX DY)");
            }
        }
    }

    fn on_timer(&mut self, ws: &mut WebSocket<'_, Player>, token: u64) {
        if token != IDLE {
            return;
        }
        // One timer per player, re-armed for the rest of the idle period: inputs cost no timer
        // work at all.
        let silent = ws.data().last_input.elapsed();
        if silent >= self.config.idle {
            // Out of the room at once, not when the close handshake ends.
            self.leave_current(ws);
            ws.close(CloseCode(4000), "idle");
        } else {
            ws.set_timer(self.config.idle - silent, IDLE);
        }
    }

    fn on_tick(&mut self, ctx: &mut Ctx<'_, Player>) {
        let sender = self.sender.get_or_insert_with(|| ctx.sender()).clone();
        for room in self.rooms.values_mut() {
            room.tick += 1;
            for p in &mut room.players {
                p.at = (p.at.0 + p.moving.0, p.at.1 + p.moving.1);
                p.moving = (0, 0);
            }
            let mut gone = Vec::new();
            for me in &room.players {
                let mut view = format!("state {} you {} {} |", room.tick, me.at.0, me.at.1);
                for other in room.players.iter().filter(|p| p.id != me.id) {
                    view.push_str(&format!(" {} {} {};", other.name, other.at.0, other.at.1));
                }
                let status = if me.id.worker() == ctx.worker() {
                    ctx.send(me.id, Message::Text(&view))
                } else {
                    sender.send(me.id, Message::Text(&view))
                };
                if status == SendStatus::Closed {
                    gone.push(me.id);
                }
            }
            room.players.retain(|p| !gone.contains(&p.id));
        }
        self.rooms.retain(|_, r| !r.players.is_empty());
    }

    fn on_close(&mut self, ws: &mut WebSocket<'_, Player>, _code: CloseCode, _reason: &str) {
        self.leave_current(ws);
    }
}

/// The builder with the game's tick set; build it with `|| Game::new(config)`.
pub fn configure(builder: Builder, config: GameConfig) -> Builder {
    builder.tick(config.tick)
}

#[allow(dead_code)]
fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9003".into());
    // The library leaves process limits alone: room for as many connections as allowed.
    ringside::raise_fd_limit()?;
    let config = GameConfig::default();
    let server =
        configure(Server::builder().bind(addr)?, config).build(move || Game::new(config))?;
    println!("game on ws://{} ({})", server.local_addr(), server.backend_name());
    server.run()
}
