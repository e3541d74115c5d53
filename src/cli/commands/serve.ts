import { placeholder } from "../placeholder.js";

export const command = placeholder("serve", "serve pages and restore requests to a migrating peer");
