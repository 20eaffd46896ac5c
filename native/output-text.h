/*
 * A program's output bytes as the content of a JSON string (between the quotes), the form
 * command output takes in Berth's events (src/core/output-text.ts has the reader's side):
 *   - valid UTF-8 stays as it is, escaped exactly as JavaScript's JSON.stringify escapes it:
 *     \" \\ \b \f \n \r \t, other bytes below 0x20 as \u00XX (lowercase hex);
 *   - every byte that is not part of valid UTF-8 (overlong forms, surrogates, stray or missing
 *     continuation bytes, 0xF5..0xFF) becomes \udcXX, the lone surrogate U+DC00+byte
 *     ("surrogateescape", PEP 383), so no byte is ever lost or replaced.
 * A character cut in two by a read is held back (at most 3 bytes) until the next read.
 *
 * Done here rather than in Berth's Node process because it is the per-byte work of streaming
 * output: in C it runs at memory speed, beside Node instead of on its one thread.
 */
#ifndef BERTH_OUTPUT_TEXT_H
#define BERTH_OUTPUT_TEXT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* At most this many output bytes per input byte (\u00XX and \udcXX). */
#define OUTPUT_TEXT_EXPANSION 6
/* Room kept before the input for the bytes held back from the last read. */
#define OUTPUT_TEXT_CARRY 4

struct output_text {
  unsigned char held[OUTPUT_TEXT_CARRY];
  size_t held_length;
};

static const char hex_digits[] = "0123456789abcdef";

/* \uXXXX for the UTF-16 code unit UNIT. */
static size_t escape_unit(char *out, unsigned unit) {
  out[0] = '\\';
  out[1] = 'u';
  for (int digit = 0; digit < 4; digit++) out[2 + digit] = hex_digits[(unit >> (12 - 4 * digit)) & 15];
  return 6;
}

static size_t escape_ascii(char *out, unsigned char byte) {
  const char *short_form = NULL;
  switch (byte) {
  case '"': short_form = "\\\""; break;
  case '\\': short_form = "\\\\"; break;
  case '\b': short_form = "\\b"; break;
  case '\f': short_form = "\\f"; break;
  case '\n': short_form = "\\n"; break;
  case '\r': short_form = "\\r"; break;
  case '\t': short_form = "\\t"; break;
  }
  if (short_form != NULL) {
    memcpy(out, short_form, 2);
    return 2;
  }
  if (byte < 0x20) return escape_unit(out, byte);
  out[0] = (char)byte;
  return 1;
}

/* True when none of the 8 bytes needs attention: all ASCII, none below 0x20, no '"' or '\'.
 * (Bit tricks on a 64-bit word: a byte's top bit ends up set where a test matches.) */
static int plain_word(uint64_t word) {
  const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  uint64_t below_space = (word - ones * 0x20) & ~word;
  uint64_t quote = word ^ (ones * '"'), backslash = word ^ (ones * '\\');
  uint64_t has_quote = (quote - ones) & ~quote, has_backslash = (backslash - ones) & ~backslash;
  return ((word | below_space | has_quote | has_backslash) & highs) == 0;
}

/* The length of the valid UTF-8 sequence at IN (AVAILABLE bytes there), 0 if the first byte
 * cannot start one, or -1 if the bytes so far are a valid start that AVAILABLE cuts short. */
static int utf8_sequence(const unsigned char *in, size_t available) {
  unsigned char lead = in[0];
  int length;
  unsigned char low = 0x80, high = 0xbf; /* the second byte's range */
  if (lead >= 0xc2 && lead <= 0xdf) length = 2;
  else if (lead >= 0xe0 && lead <= 0xef) length = 3;
  else if (lead >= 0xf0 && lead <= 0xf4) length = 4;
  else return 0;
  if (lead == 0xe0) low = 0xa0;      /* overlong */
  else if (lead == 0xed) high = 0x9f; /* UTF-16 surrogates */
  else if (lead == 0xf0) low = 0x90;  /* overlong */
  else if (lead == 0xf4) high = 0x8f; /* above U+10FFFF */
  for (int index = 1; index < length; index++) {
    if ((size_t)index >= available) return -1;
    unsigned char next = in[index];
    if (index == 1 ? next < low || next > high : (next & 0xc0) != 0x80) return 0;
  }
  return length;
}

/*
 * Escapes the LENGTH bytes at IN, which must have OUTPUT_TEXT_CARRY writable bytes before it
 * (the bytes held from the last call go there). OUT needs room for
 * OUTPUT_TEXT_EXPANSION * (LENGTH + OUTPUT_TEXT_CARRY) bytes. With FINAL (the stream's end),
 * nothing is held back. Returns the number of bytes written to OUT.
 */
static size_t output_text_escape(struct output_text *state, unsigned char *in, size_t length,
                                 int final, char *out) {
  in -= state->held_length;
  memcpy(in, state->held, state->held_length);
  length += state->held_length;
  state->held_length = 0;
  size_t written = 0;
  for (size_t index = 0; index < length;) {
    if (length - index >= 8) {
      uint64_t word;
      memcpy(&word, in + index, 8);
      if (plain_word(word)) {
        memcpy(out + written, in + index, 8);
        written += 8;
        index += 8;
        continue;
      }
    }
    unsigned char byte = in[index];
    if (byte < 0x80) {
      written += escape_ascii(out + written, byte);
      index++;
      continue;
    }
    int sequence = utf8_sequence(in + index, length - index);
    if (sequence < 0 && !final) {
      state->held_length = length - index;
      memcpy(state->held, in + index, state->held_length);
      break;
    }
    if (sequence > 0) {
      memcpy(out + written, in + index, (size_t)sequence);
      written += (size_t)sequence;
      index += (size_t)sequence;
    } else {
      written += escape_unit(out + written, 0xdc00u + byte);
      index++;
    }
  }
  return written;
}

#endif
