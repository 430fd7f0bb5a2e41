"""The largest per-device batch that fits, in few compiles: bytes per device grow about linearly in the
batch, so two compiles fit the line, one confirms its prediction, and a miss refits with that point."""

from typing import Callable, Dict, List, Optional, Tuple

MAX_TRIES = 3  # Compiles after the two that fit the line.
CLOSE = 0.9  # A fitting batch whose bytes reach this fraction of the device's ends the search.


def _predict(a: Tuple[int, int], b: Tuple[int, int], usable: int) -> Optional[float]:
  (b1, m1), (b2, m2) = sorted([a, b])
  if b2 == b1 or m2 <= m1:
    return None
  return b1 + (usable - m1) * (b2 - b1) / (m2 - m1)


def largest_batch(measure: Callable[[int], int], usable: int, first: Tuple[int, int], *, limit: int,
                  multiple: int = 8) -> Dict:
  """The largest per-device batch (a multiple of `multiple`, at most `limit`) whose bytes fit `usable`,
  as the line through the compiles predicts it and one compile confirms.

  measure(batch) -> bytes per device (a compile). first: (batch, bytes) already known.
  Memory grows more slowly than the line at large batches (temporaries are reused), so a fitting guess far
  below the device's memory refits through the two largest points and tries again, up to MAX_TRIES.
  Returns {'batch', 'bytes', 'points': [(batch, bytes), ...]}: 'batch' was compiled and fits (0 when
  nothing tried fits).
  """
  points: List[Tuple[int, int]] = [first]
  probe = first[0] * 2 if first[1] <= usable else max(1, first[0] // 2)
  points.append((probe, measure(probe)))
  for _ in range(MAX_TRIES):
    fitting = [p for p in points if p[1] <= usable]
    missing = [p for p in points if p[1] > usable]
    # The line between the two points nearest the boundary: the largest that fits and the smallest that does not.
    pair = ([max(fitting), min(missing)] if fitting and missing else sorted(points, key=lambda p: p[0])[-2:]
            if fitting else sorted(points, key=lambda p: p[0])[:2])
    predicted = _predict(pair[0], pair[1], usable)
    if predicted is None:
      break
    guess = min(limit, max(multiple if predicted >= multiple else 1, int(predicted) // multiple * multiple))
    if guess in [batch for batch, _ in points]:
      break
    points.append((guess, measure(guess)))
    if CLOSE * usable <= points[-1][1] <= usable or (guess == limit and points[-1][1] <= usable):
      break  # The prediction, compiled, fits and leaves less than the next step would need.
  fitting = [p for p in points if p[1] <= usable]
  best = max(fitting) if fitting else (0, None)
  return {'batch': best[0], 'bytes': best[1], 'points': points}
