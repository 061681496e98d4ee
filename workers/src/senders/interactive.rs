//! Buttons and lists on an outbound text message.
//!
//! The envelope has no outbound interactive content type yet, so a bot
//! asks for choices with the `interactive` attribute of a text message,
//! a small JSON object the sender maps to each channel:
//!
//! ```json
//! {"buttons": [{"id": "yes", "title": "Yes"}, {"id": "no", "title": "No"}]}
//! {"list": {"button": "Options", "sections": [{"title": "Sizes",
//!   "rows": [{"id": "s", "title": "Small", "description": "30 cm"}]}]}}
//! ```
//!
//! WhatsApp sends reply buttons (at most 3) or a list (at most 10 rows);
//! Messenger and Instagram send quick replies (at most 13); SMS lists the
//! choices under the text; web chat gets the envelope as it is.

use serde::Deserialize;
use switchboard_proto::v1::Envelope;

use super::outcome::SendError;

/// The attribute holding the choices.
pub const ATTRIBUTE: &str = "interactive";

/// Choices offered with a text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interactive {
    /// Reply buttons.
    #[serde(default)]
    pub buttons: Vec<Choice>,
    /// A list behind a button.
    #[serde(default)]
    pub list: Option<List>,
}

/// One choice.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    /// What comes back when the customer picks it.
    pub id: String,
    /// What the customer sees.
    pub title: String,
    /// A second line (lists only).
    #[serde(default)]
    pub description: String,
}

/// A list of choices in sections.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct List {
    /// The label of the button that opens the list.
    pub button: String,
    /// The sections.
    pub sections: Vec<Section>,
}

/// A titled group of rows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Section {
    /// The section's title.
    #[serde(default)]
    pub title: String,
    /// Its choices.
    pub rows: Vec<Choice>,
}

impl Interactive {
    /// The choices of `envelope`, if it asks for any.
    pub fn of(envelope: &Envelope) -> Result<Option<Self>, SendError> {
        let Some(raw) = envelope.attributes.get(ATTRIBUTE) else {
            return Ok(None);
        };
        let parsed: Self = serde_json::from_str(raw).map_err(|e| {
            SendError::Unsendable(format!("the {ATTRIBUTE} attribute is not valid: {e}"))
        })?;
        if parsed.buttons.is_empty() == parsed.list.is_none() {
            return Err(SendError::Unsendable(format!(
                "the {ATTRIBUTE} attribute needs either buttons or a list"
            )));
        }
        Ok(Some(parsed))
    }

    /// Every choice: the buttons, or the list's rows in order.
    pub fn choices(&self) -> Vec<&Choice> {
        match &self.list {
            Some(list) => list.sections.iter().flat_map(|s| &s.rows).collect(),
            None => self.buttons.iter().collect(),
        }
    }
}
