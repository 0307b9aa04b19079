//! What the console prints: tables of users, rooms and locks, the status,
//! sizes and durations as people read them.

use std::time::{Duration, SystemTime};

use crate::core::{Lock, StatusReport};
use crate::protocol::{RoomInfo, UserState};

/// One line per user, with their room.
pub fn format_users(users: &[(String, UserState)]) -> String {
    if users.is_empty() {
        return "no users connected\n".into();
    }
    let mut out = format!(
        "{:<16} {:<24} {:<6} {:<10} {:>10}\n",
        "ROOM", "NAME", "ROLE", "STATUS", "LATENCY"
    );
    for (room, u) in users {
        let latency = u
            .latency_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms:.1} ms"));
        let role = if u.admin { "admin" } else { "user" };
        out.push_str(&format!(
            "{room:<16} {:<24} {role:<6} {:<10} {latency:>10}\n",
            u.name,
            u.status.to_string()
        ));
    }
    out
}

/// One line per datablock held by a user, oldest lock first.
pub fn format_locks(locks: &[Lock], now: SystemTime) -> String {
    if locks.is_empty() {
        return "no datablock is held by a user\n".into();
    }
    let mut out = format!(
        "{:<16} {:<24} {:<38} {:<14} {}\n",
        "ROOM", "USER", "DATABLOCK", "TYPE", "SINCE"
    );
    for lock in locks {
        let held = now.duration_since(lock.since).unwrap_or_default();
        out.push_str(&format!(
            "{:<16} {:<24} {:<38} {:<14} {} ({} ago)\n",
            lock.room,
            lock.user,
            lock.uuid,
            lock.type_id,
            humantime::format_rfc3339_seconds(lock.since),
            human_duration(Duration::from_secs(held.as_secs()))
        ));
    }
    out
}

/// One line per room.
pub fn format_rooms(rooms: &[RoomInfo]) -> String {
    let mut out = format!(
        "{:<16} {:>5} {:<9} {:>10} {:>10} {}\n",
        "ROOM", "USERS", "STATE", "DATABLOCKS", "SIZE", "FLAGS"
    );
    for r in rooms {
        let mut flags = Vec::new();
        if r.keep_open {
            flags.push("keep-open");
        }
        if r.private {
            flags.push("password");
        }
        out.push_str(&format!(
            "{:<16} {:>5} {:<9} {:>10} {:>10} {}\n",
            r.name,
            r.users_online,
            r.state.to_string(),
            r.datablocks,
            human_bytes(usize::try_from(r.bytes).unwrap_or(usize::MAX)),
            flags.join(",")
        ));
    }
    out
}

/// The `status` report: one line per room, then the uptime.
pub fn format_status(reports: &[StatusReport]) -> String {
    let mut out = String::new();
    for s in reports {
        out.push_str(&format!(
            "room {}: state {}, {} datablocks ({}), {} users{}\n",
            s.room,
            s.state,
            s.datablocks,
            human_bytes(s.bytes),
            s.users,
            if s.keep_open { ", kept open" } else { "" }
        ));
    }
    if let Some(first) = reports.first() {
        out.push_str(&format!("up {}\n", human_duration(first.uptime)));
    }
    out
}

pub(super) fn human_bytes(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

pub(super) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_show_who_and_since_when() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let lock = Lock {
            room: "default".into(),
            user: "alice".into(),
            uuid: "cube".into(),
            type_id: "Object".into(),
            since,
        };
        let text = format_locks(&[lock], since + Duration::from_secs(125));
        let row = text.lines().nth(1).unwrap_or_default();
        for word in [
            "default",
            "alice",
            "cube",
            "Object",
            "2027-01-15T08:00:00Z",
            "0h 02m 05s ago",
        ] {
            assert!(row.contains(word), "{word}: {text}");
        }
        assert_eq!(format_locks(&[], since), "no datablock is held by a user\n");
    }

    #[test]
    fn formats_sizes_and_durations() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_duration(Duration::from_secs(3723)), "1h 02m 03s");
    }
}
