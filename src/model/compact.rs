//! Compact forms of the maps a breach holds, so that hundreds of thousands of open breaches fit in
//! memory. They serialize exactly as the maps they replace (JSON objects sorted by key).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{AlertState, Labels};

/// A label set in two allocations: the names and values back to back, and where each ends.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct LabelSet {
    text: Box<str>,
    /// `ends[2i]` ends name i, `ends[2i + 1]` ends value i; pairs sorted by name.
    ends: Box<[u32]>,
}

impl LabelSet {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0usize;
        let mut at = |end: u32| {
            let s = self.text.get(start..end as usize).unwrap_or_default();
            start = end as usize;
            s
        };
        let pairs: Vec<(&str, &str)> = self.ends.chunks(2).map(|c| (at(c[0]), at(c[1]))).collect();
        pairs.into_iter()
    }

    pub fn len(&self) -> usize {
        self.ends.len() / 2
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn to_labels(&self) -> Labels {
        self.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for LabelSet {
    /// Pairs in any order; a repeated name keeps its last value.
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(pairs: I) -> Self {
        let sorted: BTreeMap<&str, &str> = pairs.into_iter().collect();
        let mut text = String::new();
        let mut ends = Vec::with_capacity(sorted.len() * 2);
        for (k, v) in sorted {
            text.push_str(k);
            ends.push(text.len() as u32);
            text.push_str(v);
            ends.push(text.len() as u32);
        }
        LabelSet {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

impl From<&Labels> for LabelSet {
    fn from(l: &Labels) -> Self {
        l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }
}

impl fmt::Debug for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for LabelSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for LabelSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let labels = Labels::deserialize(d)?;
        Ok(LabelSet::from(&labels))
    }
}

/// The alerts of a breach by alert key, sorted; usually one or a few.
#[derive(Clone, Default, PartialEq)]
pub struct AlertMap(Vec<(Box<str>, AlertState)>);

impl AlertMap {
    pub fn get_mut(&mut self, key: &str) -> Option<&mut AlertState> {
        let i = self.0.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
        self.0.get_mut(i).map(|(_, a)| a)
    }

    pub fn insert(&mut self, key: &str, alert: AlertState) {
        match self.0.binary_search_by(|(k, _)| (**k).cmp(key)) {
            Ok(i) => self.0[i].1 = alert,
            Err(i) => {
                self.0.insert(i, (key.into(), alert));
                self.0.shrink_to_fit();
            }
        }
    }

    /// Forgets the resolved alert that resolved first; false if every alert fires.
    pub fn forget_oldest_resolved(&mut self) -> bool {
        let oldest = self
            .0
            .iter()
            .enumerate()
            .filter(|(_, (_, a))| !a.firing)
            .min_by_key(|(_, (_, a))| a.resolved_at)
            .map(|(i, _)| i);
        match oldest {
            Some(i) => {
                self.0.remove(i);
                true
            }
            None => false,
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &AlertState> {
        self.0.iter().map(|(_, a)| a)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &AlertState)> {
        self.0.iter().map(|(k, a)| (&**k, a))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for AlertMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for AlertMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, a) in self.iter() {
            m.serialize_entry(k, a)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for AlertMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AlertMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of alert key to alert state")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<AlertMap, A::Error> {
                let mut alerts = AlertMap::default();
                while let Some((k, a)) = m.next_entry::<String, AlertState>()? {
                    alerts.insert(&k, a);
                }
                Ok(alerts)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_sets_round_trip_as_maps() {
        let labels: Labels = [
            ("service", "web"),
            ("alertname", "X"),
            ("empty", ""),
            ("ü", "ß=\0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let set = LabelSet::from(&labels);
        assert_eq!(set.len(), 4);
        assert_eq!(set.get("service"), Some("web"));
        assert_eq!(set.get("empty"), Some(""));
        assert_eq!(set.get("ü"), Some("ß=\0"));
        assert_eq!(set.get("missing"), None);
        assert_eq!(set.to_labels(), labels);
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, serde_json::to_string(&labels).unwrap());
        let back: LabelSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        assert!(LabelSet::default().is_empty());
    }

    #[test]
    fn alert_maps_stay_sorted_and_round_trip_as_maps() {
        let at = |s: i64| AlertState {
            firing: true,
            starts_at: jiff::Timestamp::from_second(s).unwrap(),
            resolved_at: None,
        };
        let mut m = AlertMap::default();
        m.insert("b", at(2));
        m.insert("a", at(1));
        m.insert("b", at(3));
        assert_eq!(m.len(), 2);
        assert_eq!(m.iter().map(|(k, _)| k).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(m.get_mut("b").unwrap().starts_at, at(3).starts_at);
        let as_map: BTreeMap<&str, &AlertState> = m.iter().collect();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(json, serde_json::to_string(&as_map).unwrap());
        let back: AlertMap = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
    }
}
