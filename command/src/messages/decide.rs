//! The message decision, pure: a message is posted once. A post is written under a stream
//! of its own; with an `Idempotency-Key` the stream is named by the user and the key, so a
//! retry finds the message written first, and is answered with it if it asks for the
//! same message, or refused if the key was used for another.

use cairn_events::domain::message::MessagePosted;
use ulid::Ulid;

/// What a post comes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Append the message.
    Post,
    /// A retry of the message with this id: nothing to write, answer as the first time.
    Repeat(Ulid),
}

/// Why a post is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The key names a different message.
    #[error("this Idempotency-Key was used for a different message")]
    KeyReused,
}

/// Decide `post` given the message its stream holds already (`first`), if any.
pub fn decide(first: Option<&MessagePosted>, post: &MessagePosted) -> Result<Decision, Refused> {
    match first {
        None => Ok(Decision::Post),
        Some(first) if first.text == post.text && first.hashtags == post.hashtags => {
            Ok(Decision::Repeat(first.message_id))
        }
        Some(_) => Err(Refused::KeyReused),
    }
}

#[cfg(test)]
mod tests {
    use cairn_events::domain::message::Hashtag;
    use uuid::Uuid;

    use super::*;

    fn message(id: u128, text: &str, tags: &[&str]) -> MessagePosted {
        MessagePosted {
            message_id: Ulid(id),
            user_id: Uuid::from_u128(1),
            user_name: "kim".into(),
            text: text.into(),
            hashtags: tags
                .iter()
                .map(|t| Hashtag::parse(t).unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        }
    }

    #[test]
    fn a_new_message_is_posted() {
        assert_eq!(decide(None, &message(1, "hi", &["a"])), Ok(Decision::Post));
    }

    #[test]
    fn a_retry_answers_with_the_first_message() {
        let first = message(1, "hi", &["a"]);
        let again = message(2, "hi", &["a"]);
        assert_eq!(decide(Some(&first), &again), Ok(Decision::Repeat(Ulid(1))));
    }

    #[test]
    fn another_message_under_the_key_is_refused() {
        let first = message(1, "hi", &["a"]);
        for other in [message(2, "hello", &["a"]), message(2, "hi", &["b"])] {
            assert_eq!(decide(Some(&first), &other), Err(Refused::KeyReused));
        }
    }
}
