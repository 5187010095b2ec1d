//! The layers over the defaults, read as one map by `Config`'s `Deserialize`: the file's
//! keys as TOML values, and the variables set over them as strings. `Config` takes its
//! default for a setting in neither and refuses a key it does not know. A variable's string
//! is parsed as the type its field asks for ([`EnvValue`]): that is what lets one generic
//! rule (`CAIRN_<NAME>`) cover numbers, addresses and comma-separated lists alike. Every
//! error names the variable or the file's key, and the value.

use std::collections::BTreeMap;

use serde::Deserializer;
use serde::de::value::{
    MapAccessDeserializer, SeqDeserializer, StrDeserializer, StringDeserializer,
};
use serde::de::{DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

/// `T` from the file's `table` (`origin` names the file in errors) with the `variables`
/// (setting, variable, value) over it.
pub(super) fn deserialize<T: DeserializeOwned>(
    origin: &str,
    table: toml::Table,
    variables: impl IntoIterator<Item = (String, String, String)>,
) -> Result<T, String> {
    let mut layers: BTreeMap<String, Layer> = table
        .into_iter()
        .map(|(key, value)| (key, Layer::File(value)))
        .collect();
    for (setting, name, value) in variables {
        layers.insert(setting, Layer::Env { name, value });
    }
    let map = Layers {
        origin,
        entries: layers.into_iter(),
        value: None,
    };
    T::deserialize(MapAccessDeserializer::new(map)).map_err(|e| e.0)
}

/// Where a setting's value comes from.
enum Layer {
    File(toml::Value),
    Env { name: String, value: String },
}

/// The settings given by the file or the environment, as a map for `Config`'s `Deserialize`
/// (which takes the default for the others, and refuses unknown keys).
struct Layers<'a> {
    origin: &'a str,
    entries: std::collections::btree_map::IntoIter<String, Layer>,
    value: Option<(String, Layer)>,
}

/// A message naming the variable or the file's key at fault.
#[derive(Debug)]
struct Error(String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl serde::de::Error for Error {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

impl<'de> MapAccess<'de> for Layers<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, layer)) = self.entries.next() else {
            return Ok(None);
        };
        let deserializer: StringDeserializer<Error> = key.clone().into_deserializer();
        let key_seen = seed
            .deserialize(deserializer)
            .map_err(|e| Error(format!("{}: {e}", self.origin)))?;
        self.value = Some((key, layer));
        Ok(Some(key_seen))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some((key, Layer::File(value))) => seed.deserialize(value.clone()).map_err(|e| {
                Error(format!(
                    "{}: {key} = {value} is not valid: {e}",
                    self.origin
                ))
            }),
            Some((_, Layer::Env { name, value })) => seed
                .deserialize(EnvValue(&value))
                .map_err(|e| Error(format!("{name}={value:?} is not valid: {e}"))),
            None => Err(Error("a value without its key".into())),
        }
    }
}

/// One variable's value, read as the type its field asks for.
struct EnvValue<'a>(&'a str);

impl<'de> IntoDeserializer<'de, Error> for EnvValue<'_> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// `deserialize_*` methods that parse the string as the named type.
macro_rules! parse_as {
    ($($method:ident => $visit:ident, $what:literal;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                match self.0.parse() {
                    Ok(v) => visitor.$visit(v),
                    Err(e) => Err(Error(format!("expected {} ({e})", $what))),
                }
            }
        )*
    };
}

impl<'de> Deserializer<'de> for EnvValue<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_str(self.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    /// Lists are comma-separated; blanks around and between the commas are dropped.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items = self.0.split(',').map(str::trim).filter(|s| !s.is_empty());
        visitor.visit_seq(SeqDeserializer::new(items.map(EnvValue)))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let deserializer: StrDeserializer<Error> = self.0.into_deserializer();
        visitor.visit_enum(deserializer)
    }

    parse_as! {
        deserialize_bool => visit_bool, "true or false";
        deserialize_u8 => visit_u8, "a whole number, 0 or more";
        deserialize_u16 => visit_u16, "a whole number, 0 or more";
        deserialize_u32 => visit_u32, "a whole number, 0 or more";
        deserialize_u64 => visit_u64, "a whole number, 0 or more";
        deserialize_i8 => visit_i8, "a whole number";
        deserialize_i16 => visit_i16, "a whole number";
        deserialize_i32 => visit_i32, "a whole number";
        deserialize_i64 => visit_i64, "a whole number";
        deserialize_f32 => visit_f32, "a number";
        deserialize_f64 => visit_f64, "a number";
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct tuple tuple_struct map struct
        identifier ignored_any
    }
}
