//! The game example (`engine/server/examples/game.rs`) on both backends, with two workers so
//! that rooms are reached across workers: joins, inputs applied at the tick, each player's own
//! view at every tick, the tick rate, and the idle timer dropping a silent player.

#[path = "../../engine/server/examples/game.rs"]
mod game;

use std::time::{Duration, Instant};

use ringside::Workers;
use ringside_tests::{each_backend, Client, Seen, TestServer, WAIT};

use game::{Game, GameConfig};

fn start(backend: ringside::Backend, idle: Duration) -> TestServer {
    let config = GameConfig { tick: Duration::from_millis(33), idle };
    TestServer::start(
        backend,
        |b| game::configure(b.workers(Workers::Count(2)), config),
        move || Game::new(config),
    )
}

/// The next state message, skipping other replies.
fn next_state(c: &mut Client) -> (u64, String) {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "no state");
        match c.recv().unwrap() {
            Seen::Text(t) if t.starts_with("state ") => {
                let (tick, view) = t["state ".len()..].split_once(' ').unwrap();
                return (tick.parse().unwrap(), view.to_owned());
            }
            Seen::Text(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads states until one satisfies `want`.
fn state_until(c: &mut Client, what: &str, want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "never saw {what}");
        let (_, view) = next_state(c);
        if want(&view) {
            return view;
        }
    }
}

each_backend! {
    fn players_see_their_room_at_every_tick(backend) {
        let server = start(backend, Duration::from_secs(30));
        let mut players: Vec<Client> = (0..4).map(|_| Client::connect(server.addr).unwrap()).collect();
        for (i, p) in players.iter_mut().enumerate() {
            p.send_text(&format!("join arena p{i}")).unwrap();
            assert_eq!(p.recv().unwrap(), Seen::Text("joined arena".into()));
        }
        // Everyone ends up seeing the three others, at their start positions.
        for (i, p) in players.iter_mut().enumerate() {
            let view = state_until(p, "all four players", |v| v.matches(';').count() == 3);
            assert!(view.starts_with("you 0 0 |"), "{view}");
            assert!(!view.contains(&format!("p{i} ")), "a player's view lists the others: {view}");
        }
        // An input is applied at the next tick, to the mover's own view and the others'.
        players[1].send_text("move 3 -2").unwrap();
        state_until(&mut players[1], "the move", |v| v.starts_with("you 3 -2 |"));
        state_until(&mut players[2], "p1 moved", |v| v.contains("p1 3 -2;"));
        // Ticks come at about 30 Hz (a loaded machine may stretch them, never bunch them up).
        let (first, _) = next_state(&mut players[3]);
        let started = Instant::now();
        let mut last = first;
        while started.elapsed() < Duration::from_secs(1) {
            let (tick, _) = next_state(&mut players[3]);
            assert!(tick > last, "ticks increase: {tick} after {last}");
            last = tick;
        }
        let per_second = (last - first) as f64 / started.elapsed().as_secs_f64();
        assert!((15.0..=35.0).contains(&per_second), "{per_second:.1} ticks/s");
        // A player who leaves disappears from the others' views.
        drop(players.remove(0));
        state_until(&mut players[0], "p0 gone", |v| !v.contains("p0 ") && v.matches(';').count() == 2);
        // Another room is separate.
        let mut other = Client::connect(server.addr).unwrap();
        other.send_text("join lobby solo").unwrap();
        assert_eq!(other.recv().unwrap(), Seen::Text("joined lobby".into()));
        let view = state_until(&mut other, "the lobby", |_| true);
        assert_eq!(view, "you 0 0 |");
    }
}

each_backend! {
    fn a_silent_player_is_dropped_by_its_timer(backend) {
        let server = start(backend, Duration::from_millis(400));
        let started = Instant::now();
        let mut silent = Client::connect(server.addr).unwrap();
        let mut active = Client::connect(server.addr).unwrap();
        silent.send_text("join r silent").unwrap();
        active.send_text("join r active").unwrap();
        // The silent one is closed with 4000 after its idle time; reading its states meanwhile,
        // while the active one keeps sending (a still input at every state the silent one gets).
        let code = loop {
            assert!(started.elapsed() < WAIT, "never dropped");
            match silent.recv().unwrap() {
                Seen::Close(code, _) => break code,
                Seen::Text(_) => active.send_text("move 0 0").unwrap(),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(code, Some(4000));
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
        // The active one, moving more often than its idle time, stays, and the silent one is
        // out of its room from the moment it was dropped (states arrive in order: once gone,
        // never back).
        state_until(&mut active, "the silent one gone", |v| !v.contains("silent"));
        for step in 1..=9 {
            active.send_text("move 1 0").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            let x = format!("you {step} 0 |");
            let view = state_until(&mut active, &x, |v| v.starts_with(&x));
            assert!(!view.contains("silent"), "{view}");
        }
    }
}
