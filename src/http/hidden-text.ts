/**
 * Free text a human reads (a purpose, a reason): any script, joiners and emoji, but nothing that carries text
 * its reader does not see while a model reading it for an approver still does (src/http/schemas.ts
 * `fieldWithControls`, rule `text`).
 */

/**
 * Control characters (C0, DEL, C1: NUL, ESC, CR forge lines and repaint terminals), line and paragraph
 * separators, and bidi embeddings, overrides and isolates (text shown in another order than it was sent).
 */
const CONTROLS = /[\p{Cc}\u2028\u2029\u202a-\u202e\u2066-\u2069]/u;

/**
 * Characters that carry text no one sees: the zero-width space, word joiner and invisible operators, the BOM,
 * interlinear annotation marks, Hangul fillers, the Mongolian vowel separator, and two blank glyphs that are
 * neither spaces nor default-ignorable (the musical null notehead, the Khitan small script filler): set between
 * spaces of different kinds, each kept a run of blanks apart and spelled a payload no one sees.
 */
const HIDDEN = /[\u115f\u1160\u180e\u200b\u2060-\u2064\u3164\ufeff\uffa0\ufff9-\ufffb\u{16fe4}\u{1d159}]/u;

/**
 * An emoji flag's tag sequence (U+1F3F4, a subdivision code, CANCEL TAG; UTS #51): the one place tag characters
 * belong, and only the three that Unicode recommends for general interchange (RGI) and platforms draw: England,
 * Scotland, Wales. Any other code renders as a plain black flag, so allowing every well-formed subdivision code
 * ("usca", 3-7 letters and digits) let a row of black flags carry 7 hidden characters each.
 */
const FLAG_TAGS =
  /\u{1f3f4}(?:\u{e0067}\u{e0062}(?:\u{e0065}\u{e006e}\u{e0067}|\u{e0073}\u{e0063}\u{e0074}|\u{e0077}\u{e006c}\u{e0073}))\u{e007f}/gu;

/**
 * The default-ignorable characters (rendered as nothing) that real text needs, one at a time: soft hyphen,
 * combining grapheme joiner (Hebrew), Arabic letter mark, Mongolian free variation selectors, ZWNJ and ZWJ
 * (Indic, Persian, emoji), direction marks, and variation selectors (held to their bases below). Every other one
 * (tag characters outside a flag, Khmer inherent vowels, shorthand and musical format controls, the unassigned
 * ones of U+E0000-U+E0FFF) is refused: none of them is needed to write anything, and each hides a payload.
 */
const STRAY_INVISIBLE =
  // biome-ignore lint/suspicious/noMisleadingCharacterClass: the class lists invisible characters one by one, it composes none
  /(?!\u034f|[\u00ad\u061c\u180b-\u180d\u180f\u200c-\u200f\ufe00-\ufe0f\u{e0100}-\u{e01ef}])\p{Default_Ignorable_Code_Point}/u;

/**
 * Two invisible characters in a row: text needs one at a time (a joiner between two letters or emoji, a mark
 * after a letter). A run, say ZWJ, ZWNJ and direction marks in turn, spells bits no reader sees. The one pair
 * real text holds, an emoji's presentation selector before the ZWJ of a ZWJ sequence (❤️‍🔥), is folded first.
 */
const INVISIBLE_RUN = /\p{Default_Ignorable_Code_Point}{2}/u;
const EMOJI_SELECTOR_THEN_ZWJ = /[\ufe0e\ufe0f]\u200d/gu;

/**
 * Where U+FE00-FE0D select a glyph (Unicode's StandardizedVariants.txt lists every base): the digit zero (a
 * short-stroke zero), mathematical operators, Myanmar, Phags-pa, CJK ideographs (compatibility variants),
 * Manichaean and Egyptian hieroglyphs. After any other character (a Latin, Cyrillic or Greek letter, say) one
 * selects nothing and carries 4 hidden bits.
 */
const STANDARDIZED_BASES =
  '0\\u2200-\\u22ff\\u2a00-\\u2aff\\u1000-\\u109f\\ua9e0-\\ua9ff\\uaa60-\\uaa7f\\ua840-\\ua877\\p{Ideographic}\\u{10ac0}-\\u{10aff}\\u{13000}-\\u{1345f}';

/**
 * A variation selector where none selects a glyph: each one picks one of 16 (U+FE00-FE0F) or 240
 * (U+E0100-E01EF) values, so one after each character of ordinary text, or after an invisible character, carries
 * a hidden byte per character. Text (U+FE0E) and emoji (U+FE0F) presentation only after an emoji character (the
 * digits, # and * of keycaps included); ideographic variation selectors only after an ideograph; the others only
 * after a base of a standardized variant ({@link STANDARDIZED_BASES}).
 */
const MISPLACED_SELECTOR = new RegExp(
  [
    '(?:^|[^\\p{Emoji}])[\\ufe0e\\ufe0f]',
    '(?:^|[^\\p{Ideographic}])[\\u{e0100}-\\u{e01ef}]',
    `(?:^|[^${STANDARDIZED_BASES}])[\\ufe00-\\ufe0d]`,
  ].join('|'),
  'u',
);

/**
 * A run of blanks: spaces (any kind), the blank braille pattern, the invisible characters let through one at a
 * time above, and format characters (Egyptian hieroglyph format controls, Arabic number signs: outside their
 * script they render as nothing, or a box at most). Variation selectors are not part of one: each belongs to the
 * character before it (never a blank: {@link MISPLACED_SELECTOR}) and is taken out first.
 */
const BLANK_RUN = /[\p{Zs}\u2800\p{Default_Ignorable_Code_Point}\p{Cf}]{2,}/gu;
const SELECTORS = /[\ufe00-\ufe0f\u{e0100}-\u{e01ef}]/gu;
const INVISIBLE = /[\p{Default_Ignorable_Code_Point}\p{Cf}]/u;

/**
 * Whether a run of blanks carries more than its length: spaces of more than one kind (but for an ASCII space
 * beside one other as software writes them, {@link writtenBySoftware}), or more than one invisible or format character. Real text
 * needs one kind of space in a gap (double ASCII spaces, a French non-breaking space, the ideographic space) and at
 * most one mark beside it (a direction mark before Hebrew). Spaces that look alike, one picked per character from
 * sixteen (NBSP, U+2000-200A, U+202F, U+3000, U+2800...), or spaces with a joiner or a direction mark between each
 * pair, made a run a reader sees as trailing whitespace and a model reads in full: a payload of any length with no
 * visible character to carry it.
 */
function blankRunCarries(t: string): boolean {
  for (const [run] of t.replace(SELECTORS, '').matchAll(BLANK_RUN)) {
    const spaces: string[] = [];
    let invisible = 0;
    for (const ch of run) {
      if (INVISIBLE.test(ch)) {
        if (++invisible > 1) return true;
      } else spaces.push(ch);
    }
    if (new Set(spaces).size > 1 && !writtenBySoftware(spaces)) return true;
  }
  return false;
}

/**
 * Spaces that software writes next to the ASCII space a user typed: the non-breaking space a web editor puts in
 * every other place of a run of spaces (HTML would fold two ASCII spaces into one: "a&nbsp; b"), the narrow one
 * French typography puts before ; ! ?, and the ideographic space a Japanese or Chinese input method types.
 */
const TYPED_BESIDE_SPACE = new Set(['\u00a0', '\u202f', '\u3000']);

/**
 * Whether a run of two kinds of spaces is an ASCII space and one of {@link TYPED_BESIDE_SPACE} as software writes
 * them: taking turns (text pasted from a web page: "Done.&nbsp; Next", indentation as NBSP and space in turn), or
 * one of the two once (a space typed beside an ideographic one; Word's tab pasted as HTML, NBSPs then a space). Such
 * a run says little beyond its length: its first space, or where the odd one is, not one bit a space.
 */
function writtenBySoftware(spaces: readonly string[]): boolean {
  const kinds = new Set(spaces);
  if (kinds.size !== 2 || !kinds.has(' ') || ![...kinds].some((k) => TYPED_BESIDE_SPACE.has(k))) return false;
  const ascii = spaces.filter((ch) => ch === ' ').length;
  if (ascii === 1 || ascii === spaces.length - 1) return true;
  return spaces.every((ch, i) => i === 0 || ch !== spaces[i - 1]);
}

/** Whether free text holds a control character or anything that hides text from its reader (see above). */
export function textHasControls(s: string): boolean {
  if (CONTROLS.test(s) || HIDDEN.test(s)) return true;
  const t = s.replace(FLAG_TAGS, '\u{1f3f4}');
  return (
    STRAY_INVISIBLE.test(t) ||
    MISPLACED_SELECTOR.test(t) ||
    INVISIBLE_RUN.test(t.replace(EMOJI_SELECTOR_THEN_ZWJ, '\u200d')) ||
    blankRunCarries(t)
  );
}
