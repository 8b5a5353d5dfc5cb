//! Interned DNS names: an endpoint cache stores a 4-byte id per entry, each name's text once.

use std::hash::{BuildHasher, RandomState};

use hashbrown::HashTable;

pub(crate) type NameId = u32;

/// Name texts by id, reference-counted by the entries using them. The lookup table holds only
/// ids (4 bytes a slot) and hashes the text they point to. Names come from queries, so the hash
/// is keyed (SipHash with a random key): a pod cannot aim collisions at it.
#[derive(Default)]
pub(crate) struct Names {
    hasher: RandomState,
    table: HashTable<NameId>,
    texts: Vec<Box<str>>,
    refs: Vec<u32>,
    free: Vec<NameId>,
}

impl Names {
    pub(crate) fn get(&self, name: &str) -> Option<NameId> {
        let hash = self.hasher.hash_one(name);
        self.table.find(hash, |&id| &*self.texts[id as usize] == name).copied()
    }

    /// The id of `name`, created if new, with one more reference.
    pub(crate) fn acquire(&mut self, name: &str) -> NameId {
        let hash = self.hasher.hash_one(name);
        let texts = &self.texts;
        if let Some(&id) = self.table.find(hash, |&id| &*texts[id as usize] == name) {
            self.refs[id as usize] += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.texts[id as usize] = name.into();
                self.refs[id as usize] = 1;
                id
            }
            None => {
                let id = NameId::try_from(self.texts.len()).expect("more than 4 billion names");
                self.texts.push(name.into());
                self.refs.push(1);
                id
            }
        };
        let (hasher, texts) = (&self.hasher, &self.texts);
        self.table.insert_unique(hash, id, |&i| hasher.hash_one(&*texts[i as usize]));
        id
    }

    /// Drop one reference; the name is forgotten with its last one.
    pub(crate) fn release(&mut self, id: NameId) {
        let refs = &mut self.refs[id as usize];
        *refs -= 1;
        if *refs > 0 {
            return;
        }
        let hash = self.hasher.hash_one(&*self.texts[id as usize]);
        if let Ok(entry) = self.table.find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        self.texts[id as usize] = Box::default();
        self.free.push(id);
    }

    pub(crate) fn text(&self, id: NameId) -> &str {
        &self.texts[id as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refcounted_interning() {
        let mut names = Names::default();
        let a = names.acquire("a.example.");
        let b = names.acquire("b.example.");
        assert_eq!(names.acquire("a.example."), a);
        assert_eq!((names.len(), names.get("a.example."), names.text(b)), (2, Some(a), "b.example."));
        names.release(a);
        assert_eq!(names.get("a.example."), Some(a), "one reference left");
        names.release(a);
        assert_eq!(names.get("a.example."), None);
        let c = names.acquire("c.example.");
        assert_eq!(c, a, "freed ids are reused");
        assert_eq!((names.text(c), names.len()), ("c.example.", 2));
    }
}
