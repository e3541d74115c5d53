import { placeholder } from "../placeholder.js";

export const command = placeholder("wizard", "guided, interactive migration");
