import { placeholder } from "../placeholder.js";

export const command = placeholder("migrate", "live-migrate a process tree to another host");
