//! The push envelope (`<xml><AppId/><Encrypt/></xml>`) and the decrypted events, parsed and
//! serialised with quick-xml (wechat-protocol.md §1).
//!
//! Depends only on quick-xml and [`super::MAX_PUSH_BYTES`]. Invariants:
//! - Inputs larger than [`MAX_XML_BYTES`] are refused before parsing; nesting deeper than
//!   [`MAX_DEPTH`] is refused; nothing here panics on any input.
//! - Errors name the missing or bad field but never carry input text (an event is decrypted
//!   plaintext).
//! - `Event::parse(&e.to_xml()) == Ok(e)` for every event `Event::parse` can return.
//!
//! Text model: the root element's name is not checked (WeChat uses `xml`) and attributes are
//! ignored. A leaf element's value is its text with entity and character references resolved,
//! concatenated with its CDATA sections; end-of-line characters are kept as sent. Whitespace-only
//! text around CDATA sections (pretty-printing) is dropped. DOCTYPE declarations are refused.

use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event as XmlEvent};

/// Largest XML document (envelope or decrypted event) the parsers accept.
pub const MAX_XML_BYTES: usize = super::MAX_PUSH_BYTES;

/// Deepest element nesting accepted, the root element counting as 1. WeChat's events use 3.
pub const MAX_DEPTH: usize = 16;

/// Separator in [`OtherEvent::fields`] names for nested elements (cannot occur in an XML name).
pub const PATH_SEPARATOR: char = '/';

/// Why an envelope or event could not be parsed. Never carries input text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("XML is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("XML ended before its root element was closed")]
    Truncated,
    #[error("XML is not well-formed (at byte {position})")]
    Syntax { position: u64 },
    #[error("XML is not valid UTF-8")]
    Encoding,
    #[error("XML uses an unknown entity or an invalid character reference (at byte {position})")]
    Reference { position: u64 },
    #[error("XML element name is not supported (at byte {position})")]
    InvalidName { position: u64 },
    #[error("XML DOCTYPE declarations are not accepted")]
    Doctype,
    #[error("XML nests deeper than {max} elements")]
    TooDeep { max: usize },
    #[error("XML has content after its root element")]
    TrailingContent,
    #[error("missing required element <{0}>")]
    MissingField(&'static str),
    #[error("element <{0}> appears more than once")]
    DuplicateField(&'static str),
    #[error("element <{0}> is not an integer")]
    BadNumber(&'static str),
}

// ---------------------------------------------------------------------------------------------
// Envelope

/// The outer XML of a push: `Encrypt`, plus `AppId` (component pushes) or `ToUserName`
/// (authorizer message pushes). Other elements are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub app_id: Option<String>,
    pub to_user_name: Option<String>,
    pub encrypt: String,
}

impl Envelope {
    /// Parses a push body. Refuses bodies over [`MAX_XML_BYTES`] before looking at them.
    pub fn parse(body: &[u8]) -> Result<Self, XmlError> {
        check_size(body.len())?;
        let text = std::str::from_utf8(body).map_err(|_| XmlError::Encoding)?;
        let mut fields = Fields(parse_leaves(text)?);
        let encrypt = fields
            .take_unique("Encrypt")?
            .ok_or(XmlError::MissingField("Encrypt"))?;
        Ok(Self {
            app_id: fields.take_unique("AppId")?,
            to_user_name: fields.take_unique("ToUserName")?,
            encrypt,
        })
    }

    /// Serialises as WeChat sends it: `<xml><AppId>..</AppId><ToUserName>..</ToUserName><Encrypt>..</Encrypt></xml>`
    /// (absent elements omitted), strings in CDATA.
    pub fn to_xml(&self) -> String {
        let mut w = Writer::new();
        if let Some(app_id) = &self.app_id {
            w.text_element("AppId", app_id);
        }
        if let Some(to_user_name) = &self.to_user_name {
            w.text_element("ToUserName", to_user_name);
        }
        w.text_element("Encrypt", &self.encrypt);
        w.finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Events

pub const INFO_TYPE_COMPONENT_VERIFY_TICKET: &str = "component_verify_ticket";
pub const INFO_TYPE_AUTHORIZED: &str = "authorized";
pub const INFO_TYPE_UPDATE_AUTHORIZED: &str = "updateauthorized";
pub const INFO_TYPE_UNAUTHORIZED: &str = "unauthorized";

/// A decrypted push to the authorization-event URL, by `InfoType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    ComponentVerifyTicket(TicketEvent),
    Authorized(AuthorizationEvent),
    UpdateAuthorized(AuthorizationEvent),
    Unauthorized(UnauthorizedEvent),
    /// Any other `InfoType` (fast registration results etc.), fields kept.
    Other(OtherEvent),
}

/// `InfoType = component_verify_ticket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketEvent {
    pub app_id: String,
    pub create_time: i64,
    pub component_verify_ticket: String,
}

/// `InfoType = authorized | updateauthorized`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationEvent {
    pub app_id: String,
    pub create_time: i64,
    pub authorizer_appid: String,
    pub authorization_code: String,
    /// An absolute Unix timestamp (seconds), despite the docs' wording.
    pub authorization_code_expired_time: i64,
    pub pre_auth_code: Option<String>,
}

/// `InfoType = unauthorized`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnauthorizedEvent {
    pub app_id: String,
    pub create_time: i64,
    pub authorizer_appid: String,
}

/// An event with an `InfoType` this crate does not model.
///
/// `fields` holds every leaf element under the root except the top-level `AppId`, `CreateTime`
/// and `InfoType` (which have their own fields), in document order. Nested elements are
/// flattened: a leaf's name is its path below the root joined with [`PATH_SEPARATOR`], e.g.
/// `info/name` for `<info><name>..</name></info>`; text directly inside an element that has
/// child elements is dropped. Repeated elements are kept as repeated entries.
///
/// `info_type` should not be one of the modelled InfoTypes, and field names should be XML names
/// (as `Event::parse` produces them), or the value will not survive `to_xml` and `parse`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherEvent {
    pub app_id: Option<String>,
    pub create_time: Option<i64>,
    pub info_type: String,
    pub fields: Vec<(String, String)>,
}

impl Event {
    /// Parses decrypted event XML. Unknown elements of modelled events are ignored.
    pub fn parse(xml: &str) -> Result<Self, XmlError> {
        check_size(xml.len())?;
        let mut fields = Fields(parse_leaves(xml)?);
        let info_type = fields
            .take_unique("InfoType")?
            .ok_or(XmlError::MissingField("InfoType"))?;
        let app_id = fields.take_unique("AppId")?;
        let create_time = fields.take_number("CreateTime")?;
        let event = match info_type.as_str() {
            INFO_TYPE_COMPONENT_VERIFY_TICKET => Event::ComponentVerifyTicket(TicketEvent {
                app_id: required("AppId", app_id)?,
                create_time: required("CreateTime", create_time)?,
                component_verify_ticket: fields.take_required("ComponentVerifyTicket")?,
            }),
            INFO_TYPE_AUTHORIZED | INFO_TYPE_UPDATE_AUTHORIZED => {
                let event = AuthorizationEvent {
                    app_id: required("AppId", app_id)?,
                    create_time: required("CreateTime", create_time)?,
                    authorizer_appid: fields.take_required("AuthorizerAppid")?,
                    authorization_code: fields.take_required("AuthorizationCode")?,
                    authorization_code_expired_time: required(
                        "AuthorizationCodeExpiredTime",
                        fields.take_number("AuthorizationCodeExpiredTime")?,
                    )?,
                    pre_auth_code: fields.take_unique("PreAuthCode")?,
                };
                if info_type == INFO_TYPE_AUTHORIZED {
                    Event::Authorized(event)
                } else {
                    Event::UpdateAuthorized(event)
                }
            }
            INFO_TYPE_UNAUTHORIZED => Event::Unauthorized(UnauthorizedEvent {
                app_id: required("AppId", app_id)?,
                create_time: required("CreateTime", create_time)?,
                authorizer_appid: fields.take_required("AuthorizerAppid")?,
            }),
            _ => Event::Other(OtherEvent {
                app_id,
                create_time,
                info_type,
                fields: fields.0,
            }),
        };
        Ok(event)
    }

    /// Serialises as WeChat sends it: `AppId`, `CreateTime`, `InfoType`, then the event's own
    /// fields; strings in CDATA, numbers bare.
    pub fn to_xml(&self) -> String {
        let mut w = Writer::new();
        if let Some(app_id) = self.app_id() {
            w.text_element("AppId", app_id);
        }
        if let Some(create_time) = self.create_time() {
            w.number_element("CreateTime", create_time);
        }
        w.text_element("InfoType", self.info_type());
        match self {
            Event::ComponentVerifyTicket(e) => {
                w.text_element("ComponentVerifyTicket", &e.component_verify_ticket);
            }
            Event::Authorized(e) | Event::UpdateAuthorized(e) => {
                w.text_element("AuthorizerAppid", &e.authorizer_appid);
                w.text_element("AuthorizationCode", &e.authorization_code);
                w.number_element(
                    "AuthorizationCodeExpiredTime",
                    e.authorization_code_expired_time,
                );
                if let Some(pre_auth_code) = &e.pre_auth_code {
                    w.text_element("PreAuthCode", pre_auth_code);
                }
            }
            Event::Unauthorized(e) => w.text_element("AuthorizerAppid", &e.authorizer_appid),
            Event::Other(e) => w.flattened_fields(&e.fields),
        }
        w.finish()
    }

    /// The `InfoType` value.
    pub fn info_type(&self) -> &str {
        match self {
            Event::ComponentVerifyTicket(_) => INFO_TYPE_COMPONENT_VERIFY_TICKET,
            Event::Authorized(_) => INFO_TYPE_AUTHORIZED,
            Event::UpdateAuthorized(_) => INFO_TYPE_UPDATE_AUTHORIZED,
            Event::Unauthorized(_) => INFO_TYPE_UNAUTHORIZED,
            Event::Other(e) => &e.info_type,
        }
    }

    /// The `AppId` inside the event (the component appid).
    pub fn app_id(&self) -> Option<&str> {
        match self {
            Event::ComponentVerifyTicket(e) => Some(&e.app_id),
            Event::Authorized(e) | Event::UpdateAuthorized(e) => Some(&e.app_id),
            Event::Unauthorized(e) => Some(&e.app_id),
            Event::Other(e) => e.app_id.as_deref(),
        }
    }

    /// `CreateTime`, Unix seconds.
    pub fn create_time(&self) -> Option<i64> {
        match self {
            Event::ComponentVerifyTicket(e) => Some(e.create_time),
            Event::Authorized(e) | Event::UpdateAuthorized(e) => Some(e.create_time),
            Event::Unauthorized(e) => Some(e.create_time),
            Event::Other(e) => e.create_time,
        }
    }
}

fn required<T>(name: &'static str, value: Option<T>) -> Result<T, XmlError> {
    value.ok_or(XmlError::MissingField(name))
}

fn check_size(len: usize) -> Result<(), XmlError> {
    if len > MAX_XML_BYTES {
        return Err(XmlError::TooLarge {
            len,
            max: MAX_XML_BYTES,
        });
    }
    Ok(())
}

/// Flattened leaves of a document, in order; fields are taken out as they are recognised.
struct Fields(Vec<(String, String)>);

impl Fields {
    /// Removes and returns the top-level leaf `name`; two of them is an error.
    fn take_unique(&mut self, name: &'static str) -> Result<Option<String>, XmlError> {
        let mut found = None;
        let mut duplicate = false;
        self.0.retain_mut(|(path, value)| {
            if path != name {
                return true;
            }
            if found.is_some() {
                duplicate = true;
            } else {
                found = Some(std::mem::take(value));
            }
            false
        });
        if duplicate {
            return Err(XmlError::DuplicateField(name));
        }
        Ok(found)
    }

    fn take_required(&mut self, name: &'static str) -> Result<String, XmlError> {
        required(name, self.take_unique(name)?)
    }

    fn take_number(&mut self, name: &'static str) -> Result<Option<i64>, XmlError> {
        self.take_unique(name)?
            .map(|v| {
                v.trim_matches(|c: char| c.is_ascii_whitespace())
                    .parse::<i64>()
                    .map_err(|_| XmlError::BadNumber(name))
            })
            .transpose()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading

/// An open element while reading.
struct Frame {
    name: String,
    /// Text and CDATA, in document order.
    all: String,
    /// CDATA sections only.
    cdata: String,
    saw_cdata: bool,
    text_is_whitespace: bool,
    has_children: bool,
}

impl Frame {
    fn new(name: String) -> Self {
        Self {
            name,
            all: String::new(),
            cdata: String::new(),
            saw_cdata: false,
            text_is_whitespace: true,
            has_children: false,
        }
    }

    fn push_text(&mut self, text: &str) {
        if !is_xml_whitespace(text) {
            self.text_is_whitespace = false;
        }
        self.all.push_str(text);
    }

    fn push_cdata(&mut self, text: &str) {
        self.saw_cdata = true;
        self.cdata.push_str(text);
        self.all.push_str(text);
    }

    fn into_value(self) -> String {
        if self.saw_cdata && self.text_is_whitespace {
            self.cdata
        } else {
            self.all
        }
    }
}

fn is_xml_whitespace(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Element names we accept: ASCII `[A-Za-z_:][A-Za-z0-9_.:-]*`. WeChat's are plain ASCII, and a
/// conservative set guarantees names survive the flattening in [`OtherEvent::fields`].
fn is_supported_name(name: &[u8]) -> bool {
    match name.split_first() {
        Some((first, rest)) => {
            (first.is_ascii_alphabetic() || matches!(first, b'_' | b':'))
                && rest
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        }
        None => false,
    }
}

fn map_reader_error(err: quick_xml::Error, position: u64) -> XmlError {
    use quick_xml::errors::{IllFormedError, SyntaxError};
    match err {
        quick_xml::Error::Syntax(
            SyntaxError::UnclosedCData
            | SyntaxError::UnclosedComment
            | SyntaxError::UnclosedDoctype
            | SyntaxError::UnclosedPIOrXmlDecl
            | SyntaxError::UnclosedTag,
        )
        | quick_xml::Error::IllFormed(IllFormedError::MissingEndTag(_)) => XmlError::Truncated,
        quick_xml::Error::Encoding(_) => XmlError::Encoding,
        quick_xml::Error::Escape(_)
        | quick_xml::Error::IllFormed(IllFormedError::UnclosedReference) => {
            XmlError::Reference { position }
        }
        _ => XmlError::Syntax { position },
    }
}

/// Reads a document into its leaf elements below the root: `(path, value)` in document order,
/// where `path` joins the element names below the root with [`PATH_SEPARATOR`].
fn parse_leaves(input: &str) -> Result<Vec<(String, String)>, XmlError> {
    let input = input.strip_prefix('\u{feff}').unwrap_or(input);
    let mut reader = Reader::from_str(input);
    let mut stack: Vec<Frame> = Vec::new();
    let mut leaves = Vec::new();
    let mut root_closed = false;

    loop {
        let event = reader
            .read_event()
            .map_err(|e| map_reader_error(e, reader.error_position()))?;
        let position = reader.buffer_position();
        match event {
            XmlEvent::Start(_) | XmlEvent::Empty(_) if root_closed => {
                return Err(XmlError::TrailingContent);
            }
            XmlEvent::Start(start) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep { max: MAX_DEPTH });
                }
                let name = element_name(&start, position)?;
                if let Some(parent) = stack.last_mut() {
                    parent.has_children = true;
                }
                stack.push(Frame::new(name));
            }
            XmlEvent::Empty(start) => {
                let name = element_name(&start, position)?;
                match stack.last_mut() {
                    // `<xml/>`: a root with no children.
                    None => root_closed = true,
                    Some(parent) => {
                        parent.has_children = true;
                        if stack.len() >= MAX_DEPTH {
                            return Err(XmlError::TooDeep { max: MAX_DEPTH });
                        }
                        leaves.push((path_of(&stack, &name), String::new()));
                    }
                }
            }
            XmlEvent::End(_) => {
                // quick-xml has already checked that the end tag matches its start tag.
                let Some(frame) = stack.pop() else {
                    return Err(XmlError::Syntax { position });
                };
                if stack.is_empty() {
                    root_closed = true;
                } else if !frame.has_children {
                    let path = path_of(&stack, &frame.name);
                    leaves.push((path, frame.into_value()));
                }
            }
            XmlEvent::Text(text) => {
                let text = text.decode().map_err(|_| XmlError::Encoding)?;
                match stack.last_mut() {
                    Some(frame) => frame.push_text(&text),
                    None if is_xml_whitespace(&text) => {}
                    None if root_closed => return Err(XmlError::TrailingContent),
                    None => return Err(XmlError::Syntax { position }),
                }
            }
            XmlEvent::CData(cdata) => {
                let text = cdata.decode().map_err(|_| XmlError::Encoding)?;
                match stack.last_mut() {
                    Some(frame) => frame.push_cdata(&text),
                    None if root_closed => return Err(XmlError::TrailingContent),
                    None => return Err(XmlError::Syntax { position }),
                }
            }
            XmlEvent::GeneralRef(reference) => {
                let bad_ref = XmlError::Reference { position };
                let resolved: String = match reference.resolve_char_ref() {
                    Ok(Some(c)) => c.to_string(),
                    Ok(None) => {
                        let name = reference.decode().map_err(|_| XmlError::Encoding)?;
                        resolve_predefined_entity(&name)
                            .ok_or(bad_ref.clone())?
                            .to_owned()
                    }
                    Err(_) => return Err(bad_ref),
                };
                match stack.last_mut() {
                    Some(frame) => frame.push_text(&resolved),
                    None if root_closed => return Err(XmlError::TrailingContent),
                    None => return Err(XmlError::Syntax { position }),
                }
            }
            XmlEvent::DocType(_) => return Err(XmlError::Doctype),
            XmlEvent::Decl(_) | XmlEvent::PI(_) | XmlEvent::Comment(_) => {}
            XmlEvent::Eof => {
                if !root_closed {
                    return Err(XmlError::Truncated);
                }
                return Ok(leaves);
            }
        }
    }
}

fn element_name(start: &BytesStart<'_>, position: u64) -> Result<String, XmlError> {
    let name = start.name();
    let bytes = name.as_ref();
    if !is_supported_name(bytes) {
        return Err(XmlError::InvalidName { position });
    }
    // Supported names are ASCII, hence valid UTF-8.
    String::from_utf8(bytes.to_vec()).map_err(|_| XmlError::InvalidName { position })
}

/// The path of a leaf named `name` under the open elements `stack` (root excluded).
fn path_of(stack: &[Frame], name: &str) -> String {
    let mut path = String::new();
    for frame in stack.iter().skip(1) {
        path.push_str(&frame.name);
        path.push(PATH_SEPARATOR);
    }
    path.push_str(name);
    path
}

// ---------------------------------------------------------------------------------------------
// Writing

/// A tiny writer for the flat documents WeChat uses. Strings go in CDATA.
struct Writer {
    out: String,
}

impl Writer {
    fn new() -> Self {
        Self {
            out: String::from("<xml>"),
        }
    }

    fn finish(mut self) -> String {
        self.out.push_str("</xml>");
        self.out
    }

    fn open(&mut self, name: &str) {
        self.out.push('<');
        self.out.push_str(name);
        self.out.push('>');
    }

    fn close(&mut self, name: &str) {
        self.out.push_str("</");
        self.out.push_str(name);
        self.out.push('>');
    }

    fn cdata(&mut self, value: &str) {
        // "]]>" cannot appear inside a CDATA section: end the section after "]]" and start a new
        // one with ">". Readers concatenate adjacent sections.
        self.out.push_str("<![CDATA[");
        self.out.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
        self.out.push_str("]]>");
    }

    fn text_element(&mut self, name: &str, value: &str) {
        self.open(name);
        self.cdata(value);
        self.close(name);
    }

    fn number_element(&mut self, name: &str, value: i64) {
        self.open(name);
        self.out.push_str(&value.to_string());
        self.close(name);
    }

    /// Writes flattened `(path, value)` leaves back as nested elements. Consecutive leaves that
    /// share a parent path share the parent element; a leaf is never merged with another leaf.
    fn flattened_fields(&mut self, fields: &[(String, String)]) {
        let mut open: Vec<&str> = Vec::new();
        for (path, value) in fields {
            let segments: Vec<&str> = path.split(PATH_SEPARATOR).collect();
            let (leaf, parents) = match segments.split_last() {
                Some(split) => split,
                None => continue,
            };
            let common = open
                .iter()
                .zip(parents.iter())
                .take_while(|(a, b)| a == b)
                .count();
            while open.len() > common {
                if let Some(name) = open.pop() {
                    self.close(name);
                }
            }
            for name in parents.iter().skip(common) {
                self.open(name);
                open.push(name);
            }
            self.text_element(leaf, value);
        }
        while let Some(name) = open.pop() {
            self.close(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICKET_XML: &str = "<xml><AppId><![CDATA[wxb11529c136998cb6]]></AppId><CreateTime>1409304348</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[ticket@@@TESTTICKET]]></ComponentVerifyTicket></xml>";

    fn ticket() -> Event {
        Event::ComponentVerifyTicket(TicketEvent {
            app_id: "wxb11529c136998cb6".into(),
            create_time: 1409304348,
            component_verify_ticket: "ticket@@@TESTTICKET".into(),
        })
    }

    fn authorization() -> AuthorizationEvent {
        AuthorizationEvent {
            app_id: "wxcomponent".into(),
            create_time: 1413192760,
            authorizer_appid: "wxauthorizer".into(),
            authorization_code: "queryauthcode@@@abc".into(),
            authorization_code_expired_time: 1413196360,
            pre_auth_code: Some("preauthcode@@@xyz".into()),
        }
    }

    #[test]
    fn ticket_event_serialises_exactly_as_vector3_plaintext() {
        assert_eq!(ticket().to_xml(), TICKET_XML);
        assert_eq!(TICKET_XML.len(), 225);
        assert_eq!(Event::parse(TICKET_XML).unwrap(), ticket());
    }

    #[test]
    fn accessors_report_info_type_app_id_and_create_time() {
        let e = ticket();
        assert_eq!(e.info_type(), "component_verify_ticket");
        assert_eq!(e.app_id(), Some("wxb11529c136998cb6"));
        assert_eq!(e.create_time(), Some(1409304348));
    }

    #[test]
    fn authorized_updateauthorized_unauthorized_round_trip() {
        let events = [
            Event::Authorized(authorization()),
            Event::UpdateAuthorized(AuthorizationEvent {
                pre_auth_code: None,
                ..authorization()
            }),
            Event::Unauthorized(UnauthorizedEvent {
                app_id: "wxcomponent".into(),
                create_time: 1,
                authorizer_appid: "wxauthorizer".into(),
            }),
        ];
        for e in events {
            assert_eq!(Event::parse(&e.to_xml()).unwrap(), e);
        }
    }

    #[test]
    fn parses_pretty_printed_official_sample_without_cdata_whitespace() {
        let xml = "<?xml version=\"1.0\"?>\n<xml>\n  <AppId>\n    <![CDATA[wxcomponent]]>\n  </AppId>\n  <CreateTime> 1413192760 </CreateTime>\n  <InfoType><![CDATA[authorized]]></InfoType>\n  <AuthorizerAppid><![CDATA[wxauthorizer]]></AuthorizerAppid>\n  <AuthorizationCode>queryauthcode@@@abc</AuthorizationCode>\n  <AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime>\n  <PreAuthCode><![CDATA[preauthcode@@@xyz]]></PreAuthCode>\n  <!-- comment -->\n</xml>\n";
        assert_eq!(
            Event::parse(xml).unwrap(),
            Event::Authorized(authorization())
        );
    }

    #[test]
    fn resolves_entities_and_character_references() {
        let xml = "<xml><InfoType>x</InfoType><a>&lt;&amp;&gt;&quot;&apos;&#65;&#x42;</a></xml>";
        let Event::Other(e) = Event::parse(xml).unwrap() else {
            panic!("expected Other")
        };
        assert_eq!(e.fields, vec![("a".into(), "<&>\"'AB".into())]);
    }

    #[test]
    fn unknown_info_type_keeps_fields_in_order_and_flattens_nested_elements() {
        let xml = "<xml><AppId><![CDATA[wxc]]></AppId><CreateTime>1535442403</CreateTime><InfoType><![CDATA[notify_third_fasteregister]]></InfoType><appid><![CDATA[wxmini]]></appid><status>0</status><auth_code><![CDATA[xxx]]></auth_code><msg><![CDATA[OK]]></msg><info><name><![CDATA[Co]]></name><code><![CDATA[123]]></code><empty/></info></xml>";
        let e = Event::parse(xml).unwrap();
        let expected = Event::Other(OtherEvent {
            app_id: Some("wxc".into()),
            create_time: Some(1535442403),
            info_type: "notify_third_fasteregister".into(),
            fields: [
                ("appid", "wxmini"),
                ("status", "0"),
                ("auth_code", "xxx"),
                ("msg", "OK"),
                ("info/name", "Co"),
                ("info/code", "123"),
                ("info/empty", ""),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        });
        assert_eq!(e, expected);
        assert_eq!(e.info_type(), "notify_third_fasteregister");
        assert_eq!(Event::parse(&e.to_xml()).unwrap(), e);
    }

    #[test]
    fn other_event_without_app_id_or_create_time_round_trips() {
        let e = Event::Other(OtherEvent {
            app_id: None,
            create_time: None,
            info_type: "x".into(),
            fields: vec![
                ("a".into(), "1".into()),
                ("a/b".into(), "2".into()),
                ("a/b/c".into(), "3".into()),
                ("a".into(), "4".into()),
                ("d/e".into(), "".into()),
            ],
        });
        assert_eq!(Event::parse(&e.to_xml()).unwrap(), e);
    }

    #[test]
    fn cdata_terminator_in_values_round_trips() {
        let e = Event::ComponentVerifyTicket(TicketEvent {
            app_id: "]]>".into(),
            create_time: -5,
            component_verify_ticket: "a]]>b]]]]>c<![CDATA[ \r\n".into(),
        });
        assert_eq!(Event::parse(&e.to_xml()).unwrap(), e);
    }

    #[test]
    fn envelope_parses_component_push() {
        let body = b"<xml><AppId><![CDATA[wxb11529c136998cb6]]></AppId><Encrypt><![CDATA[abc+/=]]></Encrypt></xml>";
        let env = Envelope::parse(body).unwrap();
        assert_eq!(env.app_id.as_deref(), Some("wxb11529c136998cb6"));
        assert_eq!(env.to_user_name, None);
        assert_eq!(env.encrypt, "abc+/=");
        assert_eq!(env.to_xml().as_bytes(), body);
    }

    #[test]
    fn envelope_parses_message_push_with_to_user_name_and_extra_elements() {
        let body = b"<xml>\n <ToUserName><![CDATA[gh_123]]></ToUserName>\n <Encrypt>\n  <![CDATA[abc]]>\n </Encrypt>\n <MsgSignature>x</MsgSignature></xml>";
        let env = Envelope::parse(body).unwrap();
        assert_eq!(env.app_id, None);
        assert_eq!(env.to_user_name.as_deref(), Some("gh_123"));
        assert_eq!(env.encrypt, "abc");
        assert_eq!(Envelope::parse(env.to_xml().as_bytes()).unwrap(), env);
    }

    #[test]
    fn envelope_rejects_missing_encrypt() {
        let body = b"<xml><AppId><![CDATA[wx]]></AppId></xml>";
        assert_eq!(
            Envelope::parse(body),
            Err(XmlError::MissingField("Encrypt"))
        );
    }

    #[test]
    fn envelope_rejects_duplicate_encrypt() {
        let body = b"<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>";
        assert_eq!(
            Envelope::parse(body),
            Err(XmlError::DuplicateField("Encrypt"))
        );
    }

    #[test]
    fn envelope_rejects_body_over_max_push_bytes_before_parsing() {
        let mut body = b"<xml><Encrypt>".to_vec();
        body.resize(MAX_XML_BYTES + 1, b'A');
        assert_eq!(
            Envelope::parse(&body),
            Err(XmlError::TooLarge {
                len: MAX_XML_BYTES + 1,
                max: MAX_XML_BYTES
            })
        );
    }

    #[test]
    fn envelope_rejects_invalid_utf8() {
        assert_eq!(Envelope::parse(b"<xml>\xff</xml>"), Err(XmlError::Encoding));
    }

    #[test]
    fn parse_rejects_truncated_xml() {
        for cut in [0, 1, 5, 20, 40, 100, TICKET_XML.len() - 1] {
            let err = Event::parse(&TICKET_XML[..cut]).unwrap_err();
            assert_eq!(err, XmlError::Truncated, "cut at {cut}");
        }
    }

    #[test]
    fn parse_rejects_mismatched_end_tag() {
        let err = Event::parse("<xml><AppId>x</Appid></xml>").unwrap_err();
        assert!(matches!(err, XmlError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn parse_rejects_missing_required_event_field_by_name() {
        let cases = [
            (TICKET_XML.replace("<InfoType><![CDATA[component_verify_ticket]]></InfoType>", ""), "InfoType"),
            (TICKET_XML.replace("<AppId><![CDATA[wxb11529c136998cb6]]></AppId>", ""), "AppId"),
            (TICKET_XML.replace("<CreateTime>1409304348</CreateTime>", ""), "CreateTime"),
            (
                TICKET_XML.replace("<ComponentVerifyTicket><![CDATA[ticket@@@TESTTICKET]]></ComponentVerifyTicket>", ""),
                "ComponentVerifyTicket",
            ),
            (
                Event::Authorized(authorization())
                    .to_xml()
                    .replace("<AuthorizationCodeExpiredTime>1413196360</AuthorizationCodeExpiredTime>", ""),
                "AuthorizationCodeExpiredTime",
            ),
            ("<xml><InfoType>unauthorized</InfoType><AppId>a</AppId><CreateTime>1</CreateTime></xml>".into(), "AuthorizerAppid"),
        ];
        for (xml, field) in cases {
            let err = Event::parse(&xml).unwrap_err();
            assert_eq!(err, XmlError::MissingField(field));
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn parse_rejects_non_numeric_create_time() {
        for bad in ["abc", "", "12a", "1.5", "99999999999999999999"] {
            let xml = TICKET_XML.replace("1409304348", bad);
            assert_eq!(
                Event::parse(&xml),
                Err(XmlError::BadNumber("CreateTime")),
                "{bad}"
            );
        }
        let other = "<xml><InfoType>x</InfoType><CreateTime>soon</CreateTime></xml>";
        assert_eq!(Event::parse(other), Err(XmlError::BadNumber("CreateTime")));
    }

    #[test]
    fn parse_rejects_duplicate_known_field() {
        let xml = TICKET_XML.replace(
            "</xml>",
            "<ComponentVerifyTicket>b</ComponentVerifyTicket></xml>",
        );
        assert_eq!(
            Event::parse(&xml),
            Err(XmlError::DuplicateField("ComponentVerifyTicket"))
        );
    }

    #[test]
    fn parse_rejects_unknown_entity_and_bad_char_ref() {
        for xml in [
            "<xml><InfoType>&foo;</InfoType></xml>",
            "<xml><InfoType>&#0;</InfoType></xml>",
            "<xml><InfoType>&#xZZ;</InfoType></xml>",
            "<xml><InfoType>a & b</InfoType></xml>",
        ] {
            let err = Event::parse(xml).unwrap_err();
            assert!(matches!(err, XmlError::Reference { .. }), "{xml}: {err:?}");
        }
    }

    #[test]
    fn parse_rejects_doctype() {
        let xml = "<!DOCTYPE xml [<!ENTITY x \"y\">]><xml><InfoType>&x;</InfoType></xml>";
        assert_eq!(Event::parse(xml), Err(XmlError::Doctype));
    }

    #[test]
    fn parse_rejects_deep_nesting() {
        let depth = MAX_DEPTH + 1;
        let xml = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
        assert_eq!(
            Event::parse(&xml),
            Err(XmlError::TooDeep { max: MAX_DEPTH })
        );
    }

    #[test]
    fn parse_rejects_unsupported_element_names() {
        for xml in [
            "<xml><a/b>1</a/b></xml>",
            "<xml><1a>1</1a></xml>",
            "<xml><é>1</é></xml>",
            "<>",
        ] {
            let err = Event::parse(xml).unwrap_err();
            assert!(
                matches!(err, XmlError::InvalidName { .. } | XmlError::Syntax { .. }),
                "{xml}: {err:?}"
            );
        }
    }

    #[test]
    fn parse_rejects_content_after_root() {
        for xml in [
            format!("{TICKET_XML}<xml/>"),
            format!("{TICKET_XML}junk"),
            format!("{TICKET_XML}<![CDATA[x]]>"),
        ] {
            assert_eq!(Event::parse(&xml), Err(XmlError::TrailingContent));
        }
        assert!(Event::parse(&format!("{TICKET_XML}\n<!-- c -->\n")).is_ok());
    }

    #[test]
    fn parse_rejects_huge_input_quickly() {
        let huge = format!("<xml><InfoType>{}</InfoType></xml>", "x".repeat(8 << 20));
        let start = std::time::Instant::now();
        assert!(matches!(
            Event::parse(&huge),
            Err(XmlError::TooLarge { .. })
        ));
        assert!(start.elapsed() < std::time::Duration::from_millis(50));
    }

    #[test]
    fn errors_do_not_contain_input_text() {
        let err =
            Event::parse("<xml><InfoType>x</InfoType><CreateTime>secret-value</CreateTime></xml>")
                .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("secret-value"));
        let err = Event::parse("<xml><secret>x</secretz></xml>").unwrap_err();
        assert!(!format!("{err} {err:?}").contains("secret"));
    }
}
