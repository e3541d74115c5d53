import { readImages } from "./images/index.js";
import type { StateDocument } from "./types.js";

/** Read the dump in `dir` back into its state document. */
export function inspect(dir: string): StateDocument {
  return readImages(dir);
}
