//! English stemming for the index, remembering the words already stemmed.
//!
//! tantivy's `Stemmer` filter runs the Snowball algorithm on every token; a collection repeats
//! its vocabulary, and perf showed stemming at a sixth of the index build of 1,000 documents.
//! This filter gives the same stems (the same `frostem` algorithm) and looks a word up before
//! stemming it.
use std::collections::HashMap;

use tantivy::tokenizer::{Token, TokenFilter, TokenStream, Tokenizer};

/// Words remembered per tokenizer at most; past it, words are stemmed each time.
const MEMO_WORDS: usize = 100_000;

/// The filter: `.filter(MemoStemmer)` in place of `.filter(Stemmer::new(English))`.
#[derive(Clone, Copy, Debug)]
pub(super) struct MemoStemmer;

impl TokenFilter for MemoStemmer {
    type Tokenizer<T: Tokenizer> = MemoStemFilter<T>;

    fn transform<T: Tokenizer>(self, tokenizer: T) -> MemoStemFilter<T> {
        MemoStemFilter {
            inner: tokenizer,
            stemmer: frostem::Stemmer::new(frostem::Algorithm::English),
            memo: HashMap::new(),
        }
    }
}

/// Each indexing thread's analyzer is a clone: it remembers its own words, without locks.
#[derive(Clone)]
pub(super) struct MemoStemFilter<T> {
    inner: T,
    stemmer: frostem::Stemmer,
    memo: HashMap<String, String>,
}

impl<T: Tokenizer> Tokenizer for MemoStemFilter<T> {
    type TokenStream<'a> = MemoStemStream<'a, T::TokenStream<'a>>;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Self::TokenStream<'a> {
        MemoStemStream {
            tail: self.inner.token_stream(text),
            stemmer: &self.stemmer,
            memo: &mut self.memo,
        }
    }
}

pub(super) struct MemoStemStream<'a, S> {
    tail: S,
    stemmer: &'a frostem::Stemmer,
    memo: &'a mut HashMap<String, String>,
}

impl<S: TokenStream> TokenStream for MemoStemStream<'_, S> {
    fn advance(&mut self) -> bool {
        if !self.tail.advance() {
            return false;
        }
        let token = self.tail.token_mut();
        if let Some(stem) = self.memo.get(&token.text) {
            token.text.clear();
            token.text.push_str(stem);
        } else {
            let stem = self.stemmer.stem(&token.text).into_owned();
            if self.memo.len() < MEMO_WORDS {
                self.memo.insert(token.text.clone(), stem.clone());
            }
            token.text = stem;
        }
        true
    }

    fn token(&self) -> &Token {
        self.tail.token()
    }

    fn token_mut(&mut self) -> &mut Token {
        self.tail.token_mut()
    }
}

#[cfg(test)]
mod tests {
    use tantivy::tokenizer::{
        Language, LowerCaser, SimpleTokenizer, Stemmer, TextAnalyzer, TokenStream,
    };

    use super::MemoStemmer;

    fn tokens(analyzer: &mut TextAnalyzer, text: &str) -> Vec<String> {
        let mut stream = analyzer.token_stream(text);
        let mut out = Vec::new();
        while stream.advance() {
            out.push(stream.token().text.clone());
        }
        out
    }

    #[test]
    fn stems_as_tantivy_does_the_first_time_and_every_time_after() {
        let text = "Lenders financing pensions; the lender financed a pension, generously \
                    running runs ran connection connections connected hopefully";
        let mut tantivy = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(Stemmer::new(Language::English))
            .build();
        let mut memo = TextAnalyzer::builder(SimpleTokenizer::default())
            .filter(LowerCaser)
            .filter(MemoStemmer)
            .build();
        let expected = tokens(&mut tantivy, text);
        assert!(expected.contains(&"lender".to_string()), "{expected:?}");
        for _ in 0..3 {
            assert_eq!(tokens(&mut memo, text), expected);
        }
    }
}
