use super::*;

const E1: &str = "1700000000001";
const E2: &str = "1700000000002";

fn state(h: &History, epoch: &str, id: &str, continuity: Continuity) -> HistoryState {
    HistoryState { cursor: Some(h.cursor(epoch, id)), continuity: continuity as i32 }
}

fn msg(h: &History, id: &str) -> Message {
    Message { id: id.into(), audience: h.audience() as i32, group_id: h.group_id().into(), ..Default::default() }
}

fn at(c: &Cursors, h: &History) -> Option<(String, String)> {
    c.cursor(h).map(|c| (c.epoch, c.message_id))
}

fn team() -> History {
    History::Group("team".into())
}

/// Within a history, a message is new only if its id is after the last one; ids are
/// compared as numbers, and each history keeps its own position.
#[test]
fn messages_after_the_position_are_new_and_the_rest_are_duplicates() {
    let mut c = Cursors::new();
    c.apply_state(&state(&History::Inbox, E1, "9-0", Continuity::Resumed));
    c.apply_state(&state(&History::All, E1, "100-0", Continuity::Resumed));
    let seen: Vec<bool> = ["9-0", "9-1", "10-0", "10-0", "9-9", "11-0"]
        .iter()
        .map(|id| c.apply_message(&msg(&History::Inbox, id)))
        .collect();
    assert_eq!(seen, [false, true, true, false, false, true]);
    assert_eq!(at(&c, &History::Inbox), Some((E1.into(), "11-0".into())));
    // The broadcast history is untouched by the inbox's ids, and judges its own.
    assert_eq!(at(&c, &History::All), Some((E1.into(), "100-0".into())));
    assert!(!c.apply_message(&msg(&History::All, "99-0")));
    assert!(c.apply_message(&msg(&History::All, "100-1")));
}

/// A stream opened with older cursors (a token refresh's new stream, while the old
/// one went on delivering) says RESUMED behind the position: it does not move back,
/// so its replay of what was delivered meanwhile is dropped.
#[test]
fn an_overlapping_stream_does_not_move_a_position_back() {
    let mut c = Cursors::new();
    c.apply_state(&state(&History::Inbox, E1, "5-0", Continuity::Resumed));
    for id in ["6-0", "7-0"] {
        assert!(c.apply_message(&msg(&History::Inbox, id)));
    }
    // The new stream, opened with cursor 5-0.
    assert_eq!(
        c.apply_state(&state(&History::Inbox, E1, "5-0", Continuity::Resumed)),
        Some(Change::Resumed(History::Inbox))
    );
    let replayed: Vec<bool> =
        ["6-0", "7-0", "8-0"].iter().map(|id| c.apply_message(&msg(&History::Inbox, id))).collect();
    assert_eq!(replayed, [false, false, true]);
    // A state ahead of the position (an acknowledged one, or a join) moves it.
    c.apply_state(&state(&History::Inbox, E1, "20-0", Continuity::Resumed));
    assert!(!c.apply_message(&msg(&History::Inbox, "19-0")));
}

/// A new epoch is a new sequence of ids: its position holds even below the old one.
#[test]
fn a_new_epoch_starts_its_own_sequence() {
    let mut c = Cursors::new();
    c.apply_state(&state(&History::Inbox, E1, "50-0", Continuity::Resumed));
    assert_eq!(
        c.apply_state(&state(&History::Inbox, E2, "3-0", Continuity::Resumed)),
        Some(Change::Resumed(History::Inbox))
    );
    assert_eq!(at(&c, &History::Inbox), Some((E2.into(), "3-0".into())));
    assert!(c.apply_message(&msg(&History::Inbox, "4-0")), "new in the new epoch though below 50-0");
    assert!(!c.apply_message(&msg(&History::Inbox, "3-0")));
}

/// A gap is the app's to resync, and its position holds even behind ours: the
/// history was rolled back, and the ids that follow are new messages.
#[test]
fn a_gap_is_reported_and_its_position_holds() {
    let mut c = Cursors::new();
    c.apply_state(&state(&History::Inbox, E1, "50-0", Continuity::Resumed));
    assert_eq!(c.apply_state(&state(&History::Inbox, E1, "40-0", Continuity::Gap)), Some(Change::Gap(History::Inbox)));
    assert!(c.apply_message(&msg(&History::Inbox, "41-0")));
    // A continuity this client does not know is a gap too.
    let mut unknown = state(&team(), E1, "1-0", Continuity::Resumed);
    unknown.continuity = 99;
    assert_eq!(c.apply_state(&unknown), Some(Change::Gap(team())));
}

/// LEFT forgets the group: it is no longer resumed from or acknowledged, and the
/// other histories stay.
#[test]
fn a_group_left_is_forgotten() {
    let mut c = Cursors::new();
    c.apply_state(&state(&History::Inbox, E1, "1-0", Continuity::FromNow));
    c.apply_state(&state(&team(), E1, "7-0", Continuity::FromNow));
    assert_eq!(c.len(), 2);
    assert_eq!(c.apply_state(&state(&team(), E1, "8-0", Continuity::Left)), Some(Change::Left(team())));
    assert_eq!(c.len(), 1);
    assert_eq!(c.cursor(&team()), None);
    assert!(c.cursors().iter().all(|c| c.group_id != "team"));
    // Untracked from then on: let through, not recorded.
    assert!(c.apply_message(&msg(&team(), "9-0")));
    assert_eq!(c.len(), 1);
}

/// An item's states apply before its messages, and its duplicates are removed.
#[test]
fn an_item_applies_states_first_and_drops_duplicates() {
    let mut c = Cursors::new();
    let mut item = SubscribeResponse {
        messages: vec![msg(&team(), "3-0"), msg(&team(), "4-0"), msg(&team(), "4-0"), msg(&History::All, "1-0")],
        states: vec![
            state(&team(), E1, "3-0", Continuity::Resumed),
            state(&History::All, E1, "0-0", Continuity::Gap),
            HistoryState::default(),
        ],
        encoded: vec![],
    };
    let applied = c.apply(&mut item);
    assert_eq!(applied.changes, [Change::Resumed(team()), Change::Gap(History::All)]);
    assert_eq!(applied.duplicates, 2);
    let ids: Vec<&str> = item.messages.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["4-0", "1-0"]);
}

#[test]
fn saved_cursors_restore_and_bad_ones_are_named() {
    let mut c = Cursors::new();
    for h in [History::Inbox, History::All, team(), History::Group("a".into())] {
        c.apply_state(&state(&h, E1, "12-3", Continuity::Resumed));
    }
    let saved = c.cursors();
    let order: Vec<String> = saved.iter().map(|c| History::of_cursor(c).unwrap().to_string()).collect();
    assert_eq!(order, ["inbox", "all", "group:a", "group:team"]);
    assert_eq!(Cursors::from_saved(saved.clone()).unwrap(), c);

    for (bad, why) in [
        (Cursor { audience: 0, ..saved[0].clone() }, "names no history"),
        (Cursor { group_id: String::new(), ..saved[2].clone() }, "names no history"),
        (Cursor { epoch: String::new(), ..saved[0].clone() }, "no epoch"),
        (Cursor { message_id: "x".into(), ..saved[0].clone() }, "not a message id"),
    ] {
        let err = Cursors::from_saved([saved[1].clone(), bad]).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.reason.contains(why), "{err}");
    }
}

/// What an ack would move forward: later ids in the same epoch, newer epochs, and
/// histories not acknowledged yet; never back.
#[test]
fn acks_only_move_forward() {
    let cursors =
        |list: &[(&History, &str, &str)]| Cursors::from_saved(list.iter().map(|(h, e, id)| h.cursor(e, id))).unwrap();
    let mut acked = cursors(&[(&History::Inbox, E1, "10-0"), (&History::All, E2, "5-0")]);
    let now = cursors(&[(&History::Inbox, E1, "9-0"), (&History::All, E1, "99-0"), (&team(), E1, "1-0")]);
    let forward: Vec<Cursor> = now.after(&acked);
    assert_eq!(forward, [team().cursor(E1, "1-0")], "older ids and epochs are not acked");
    let now = cursors(&[(&History::Inbox, E1, "11-0"), (&History::All, "1800000000000", "1-0")]);
    assert_eq!(now.after(&acked).len(), 2);
    acked.advance(&now.cursors());
    acked.advance(&[History::Inbox.cursor(E1, "2-0")]);
    assert_eq!(at(&acked, &History::Inbox), Some((E1.into(), "11-0".into())));
    assert!(now.after(&acked).is_empty());
}
