//! A steady DNS load for restart tests: queries at a fixed rate, each answer matched by ID, and
//! what was sent, answered, and the longest stretch without an answer.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A query for www.microsoft.com. A with `id`.
pub fn query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["www", "microsoft", "com"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// What a steady load saw.
#[derive(Debug)]
pub struct Load {
    pub sent: usize,
    pub answered: usize,
    /// The longest time without any answer while queries were being sent.
    pub longest_gap: Duration,
}

/// `rate` queries per second from `sock` to `to` until `stop`, each waited for up to 2 s.
pub fn steady_load(sock: UdpSocket, to: SocketAddr, rate: u32, stop: Arc<AtomicBool>) -> Load {
    sock.set_read_timeout(Some(Duration::from_micros(200))).unwrap();
    let every = Duration::from_secs(1) / rate;
    let start = Instant::now();
    let mut answered = vec![false; 65_536];
    let (mut sent, mut got) = (0usize, 0usize);
    let mut last_answer = Instant::now();
    let mut longest = Duration::ZERO;
    let mut buf = [0u8; 1500];
    let mut stopped_at = None;
    loop {
        let now = Instant::now();
        if stopped_at.is_none() && stop.load(Ordering::Relaxed) {
            stopped_at = Some(now);
        }
        if let Some(t) = stopped_at
            && (now.duration_since(t) > Duration::from_secs(2) || got == sent)
        {
            break;
        }
        if stopped_at.is_none() && now >= start + every * sent as u32 && sent < 65_536 {
            let _ = sock.send_to(&query(sent as u16), to);
            sent += 1;
        }
        if let Ok(n) = sock.recv(&mut buf)
            && n >= 12
        {
            let id = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
            if id < sent && !answered[id] && buf[3] & 0x0f == 0 {
                answered[id] = true;
                got += 1;
                let now = Instant::now();
                if stopped_at.is_none() {
                    longest = longest.max(now.duration_since(last_answer));
                }
                last_answer = now;
            }
        }
    }
    Load { sent, answered: got, longest_gap: longest }
}
