// Renders the chart in helm/ the way `helm template` would, for the chart's tests. There is no helm binary
// on these machines, and no maintained JavaScript implementation of Go templates with Helm's functions, so
// this is a renderer for the SUBSET of Helm's template language the chart uses, with Helm's semantics:
//
//   - Go text/template syntax: {{ }}, the {{- and -}} whitespace trimming, {{/* comments */}}, pipelines
//     (`x | f a` calls f(a, x)), parenthesised pipelines, variables ($, $x :=), if / else if / else, with /
//     else, range (lists, and maps in sorted key order, with `$k, $v :=`), define and include;
//   - Go's rules where they bite: only nil, false, 0, "" and empty collections are false; a missing map key
//     is nil (printed as "", as Helm prints "<no value>"); a field of nil is an error; maps range in key
//     order; floats print as Go's %v does (Helm's numbers are float64: 1000000 prints as 1e+06);
//   - Helm's values: values.yaml deep-merged with the overrides (a null override deletes the key), all YAML
//     read as YAML 1.1 (`on` is true) like Helm's parser; .Release, .Chart and .Files.Get;
//   - the functions the chart calls, with Sprig's / Helm's behaviour: include, toYaml, toJson, nindent,
//     indent, quote, default, required, ternary, printf (%s %v %d %q), trunc, trimSuffix, replace, contains,
//     join, omit, index, hasKey, eq, ne, and, or, not, sha256sum.
//
// Anything outside the subset is an error, never a guess: an unknown function or keyword, printf verbs or
// comparisons whose Go behaviour differs from JavaScript's (eq on numbers), printing a map or list without
// toYaml, a missing file for .Files.Get. So a chart that renders here uses only constructs whose Helm
// behaviour this file reproduces; it cannot prove what it does not cover (Helm's own lint rules, API
// discovery, hooks), which helm/README.md says.
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Document, parseAllDocuments, parse as parseYaml } from "yaml";

type Value = unknown;
type Scope = Map<string, Value>;

// ---------------------------------------------------------------------------------------------------------
// Lexing: text and actions

interface TextToken {
  kind: "text";
  text: string;
}
interface ActionToken {
  kind: "action";
  body: string;
  where: string;
}
type Token = TextToken | ActionToken;

const SPACE = /[ \t\r\n]/;

function lex(source: string, name: string): Token[] {
  const tokens: Token[] = [];
  let pos = 0;
  let trimNext = false;
  const line = (at: number): number => source.slice(0, at).split("\n").length;
  while (pos < source.length) {
    const open = source.indexOf("{{", pos);
    let text = open === -1 ? source.slice(pos) : source.slice(pos, open);
    if (trimNext) text = text.replace(/^[ \t\r\n]+/, "");
    trimNext = false;
    if (open === -1) {
      tokens.push({ kind: "text", text });
      break;
    }
    let start = open + 2;
    // "{{- " trims: the dash must be followed by a space (text/template's rule: "{{-3}}" is a number).
    if (source[start] === "-" && SPACE.test(source[start + 1] ?? "")) {
      text = text.replace(/[ \t\r\n]+$/, "");
      start += 2;
    }
    tokens.push({ kind: "text", text });
    const where = `${name}:${line(open)}`;
    const close = findClose(source, start, where);
    let body = source.slice(start, close);
    if (/[ \t\r\n]-$/.test(body)) {
      body = body.slice(0, -1);
      trimNext = true;
    }
    body = body.trim();
    if (body.startsWith("/*")) {
      if (!body.endsWith("*/")) throw new Error(`${where}: unclosed comment`);
    } else {
      tokens.push({ kind: "action", body, where });
    }
    pos = close + 2;
  }
  return tokens;
}

/** The "}}" ending an action, skipping quoted strings and comments that may contain it. */
function findClose(source: string, from: number, where: string): number {
  let i = from;
  while (i < source.length) {
    const c = source[i];
    if (source.startsWith("/*", i)) {
      const end = source.indexOf("*/", i + 2);
      if (end === -1) throw new Error(`${where}: unclosed comment`);
      i = end + 2;
    } else if (c === '"') {
      i++;
      while (i < source.length && source[i] !== '"') i += source[i] === "\\" ? 2 : 1;
      i++;
    } else if (c === "`") {
      i = source.indexOf("`", i + 1) + 1;
      if (i === 0) throw new Error(`${where}: unclosed raw string`);
    } else if (source.startsWith("}}", i)) {
      return i;
    } else {
      i++;
    }
  }
  throw new Error(`${where}: unclosed action`);
}

// ---------------------------------------------------------------------------------------------------------
// Parsing: actions into pipelines, tokens into a tree

type Operand =
  | { type: "field"; base: "dot" | "var"; name: string; fields: string[] }
  | { type: "literal"; value: Value }
  | { type: "function"; name: string }
  | { type: "pipeline"; pipeline: Pipeline };

interface Pipeline {
  declare: string[];
  commands: Operand[][];
  where: string;
}

type Node =
  | { type: "text"; text: string }
  | { type: "output"; pipeline: Pipeline }
  | { type: "if"; branches: Array<{ pipeline: Pipeline; body: Node[] }>; otherwise: Node[] }
  | { type: "with"; pipeline: Pipeline; body: Node[]; otherwise: Node[] }
  | { type: "range"; pipeline: Pipeline; body: Node[]; otherwise: Node[] };

const KEYWORDS = new Set(["if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"]);

function tokenizeAction(body: string, where: string): string[] {
  const out: string[] = [];
  const re = /\s+|"(?:[^"\\]|\\.)*"|`[^`]*`|:=|[|(),=]|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\$[A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*|(?:\.[A-Za-z0-9_]+)+|\.|[A-Za-z_][A-Za-z0-9_]*/y;
  let m: RegExpExecArray | null;
  while (re.lastIndex < body.length && (m = re.exec(body)) !== null) if (!/^\s+$/.test(m[0])) out.push(m[0]);
  if (re.lastIndex < body.length) throw new Error(`${where}: cannot read "${body.slice(re.lastIndex)}" in {{ ${body} }}`);
  return out;
}

function parsePipeline(words: string[], where: string): Pipeline {
  let rest = words;
  const declare: string[] = [];
  const assignAt = rest.indexOf(":=");
  if (rest.includes("=")) throw new Error(`${where}: variable assignment (=) is outside the supported subset`);
  if (assignAt !== -1) {
    for (const w of rest.slice(0, assignAt)) if (w !== ",") declare.push(w);
    if (declare.length === 0 || declare.some((d) => !/^\$[A-Za-z_][A-Za-z0-9_]*$/.test(d))) throw new Error(`${where}: bad declaration`);
    rest = rest.slice(assignAt + 1);
  }
  let i = 0;
  const parseCommands = (stopAtParen: boolean): Operand[][] => {
    const commands: Operand[][] = [[]];
    while (i < rest.length) {
      const w = rest[i]!;
      if (w === ")") {
        if (!stopAtParen) throw new Error(`${where}: unexpected )`);
        return commands;
      }
      i++;
      if (w === "|") commands.push([]);
      else if (w === "(") {
        const inner = parseCommands(true);
        if (rest[i] !== ")") throw new Error(`${where}: missing )`);
        i++;
        commands.at(-1)!.push({ type: "pipeline", pipeline: { declare: [], commands: inner, where } });
      } else commands.at(-1)!.push(operand(w, where));
    }
    if (stopAtParen) throw new Error(`${where}: missing )`);
    return commands;
  };
  const commands = parseCommands(false);
  if (commands.some((c) => c.length === 0)) throw new Error(`${where}: empty command in pipeline`);
  return { declare, commands, where };
}

function operand(word: string, where: string): Operand {
  if (word.startsWith('"')) return { type: "literal", value: JSON.parse(word) as string };
  if (word.startsWith("`")) return { type: "literal", value: word.slice(1, -1) };
  if (/^-?\d/.test(word)) {
    // Integer literals are Go ints, not float64 like values: mixing them is where Go and JS differ most.
    if (!word.includes(".")) return { type: "literal", value: new GoInt(Number(word)) };
    return { type: "literal", value: Number(word) };
  }
  if (word === "true" || word === "false") return { type: "literal", value: word === "true" };
  if (word === "nil") return { type: "literal", value: null };
  if (word.startsWith("$")) {
    const [name = "$", ...fields] = word.split(".");
    return { type: "field", base: "var", name, fields };
  }
  if (word.startsWith(".")) return { type: "field", base: "dot", name: ".", fields: word === "." ? [] : word.slice(1).split(".") };
  if (KEYWORDS.has(word)) throw new Error(`${where}: unexpected keyword ${word}`);
  if (!(word in FUNCTIONS) && word !== "include") throw new Error(`${where}: function "${word}" is outside the supported subset`);
  return { type: "function", name: word };
}

/** An integer constant from the template text (Go int), kept apart from values' float64 numbers. */
class GoInt {
  readonly value: number;
  constructor(value: number) {
    this.value = value;
  }
}

function parseTemplate(tokens: Token[], defines: Map<string, Node[]>): Node[] {
  let i = 0;
  const parseUntil = (terminators: string[]): { nodes: Node[]; ended: string; rest: string[]; where: string } => {
    const nodes: Node[] = [];
    while (i < tokens.length) {
      const token = tokens[i++]!;
      if (token.kind === "text") {
        if (token.text !== "") nodes.push({ type: "text", text: token.text });
        continue;
      }
      const words = tokenizeAction(token.body, token.where);
      const [head = "", ...rest] = words;
      if (terminators.includes(head)) return { nodes, ended: head, rest, where: token.where };
      switch (head) {
        case "if": {
          const branches = [{ pipeline: parsePipeline(rest, token.where), body: [] as Node[] }];
          let otherwise: Node[] = [];
          for (;;) {
            const part = parseUntil(["else", "end"]);
            branches.at(-1)!.body = part.nodes;
            if (part.ended === "end") break;
            if (part.rest[0] === "if") {
              branches.push({ pipeline: parsePipeline(part.rest.slice(1), part.where), body: [] });
              continue;
            }
            if (part.rest.length > 0) throw new Error(`${part.where}: "else ${part.rest.join(" ")}" is outside the supported subset`);
            otherwise = parseUntil(["end"]).nodes;
            break;
          }
          nodes.push({ type: "if", branches, otherwise });
          break;
        }
        case "with":
        case "range": {
          const pipeline = parsePipeline(rest, token.where);
          if (head === "with" && pipeline.declare.length > 0) throw new Error(`${token.where}: declarations in with are outside the supported subset`);
          const part = parseUntil(["else", "end"]);
          if (part.ended === "else" && part.rest.length > 0) throw new Error(`${part.where}: "else ${part.rest.join(" ")}" is outside the supported subset`);
          const otherwise = part.ended === "else" ? parseUntil(["end"]).nodes : [];
          nodes.push({ type: head, pipeline, body: part.nodes, otherwise });
          break;
        }
        case "define": {
          const nameWord = rest[0];
          if (rest.length !== 1 || nameWord === undefined || !nameWord.startsWith('"')) throw new Error(`${token.where}: define needs one quoted name`);
          const part = parseUntil(["end"]);
          defines.set(JSON.parse(nameWord) as string, part.nodes);
          break;
        }
        default:
          if (KEYWORDS.has(head)) throw new Error(`${token.where}: "${head}" is outside the supported subset (or misplaced)`);
          nodes.push({ type: "output", pipeline: parsePipeline(words, token.where) });
      }
    }
    if (terminators.length > 0) throw new Error(`template ended before {{ ${terminators.join(" / ")} }}`);
    return { nodes, ended: "", rest: [], where: "" };
  };
  return parseUntil([]).nodes;
}

// ---------------------------------------------------------------------------------------------------------
// Evaluation

interface Context {
  defines: Map<string, Node[]>;
  files: (path: string) => string;
}

function isMap(v: Value): v is Record<string, Value> {
  return v !== null && typeof v === "object" && !Array.isArray(v) && !(v instanceof GoInt) && !(v instanceof FilesObject);
}

/** text/template's truth: false, 0, nil, "" and empty collections are false. */
function truthy(v: Value): boolean {
  if (v === null || v === undefined) return false;
  if (typeof v === "boolean") return v;
  if (typeof v === "number") return v !== 0;
  if (v instanceof GoInt) return v.value !== 0;
  if (typeof v === "string") return v.length > 0;
  if (Array.isArray(v)) return v.length > 0;
  if (isMap(v)) return Object.keys(v).length > 0;
  return true;
}

/** Sprig's `empty` (used by default): the same as not-truthy. */
const empty = (v: Value): boolean => !truthy(v);

/**
 * Go's %v of a float64, which Helm's numbers are: strconv's shortest 'g' format, which switches to an
 * exponent when it is below -4 or at least 6 (fmt.Println(1000000.0) prints 1e+06).
 */
function formatFloat(f: number): string {
  if (f === 0) return "0";
  const [mantissa = "", expText = "0"] = f.toExponential().split("e");
  const exp = Number(expText);
  if (exp < -4 || exp >= 6) return `${mantissa}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  return String(f);
}

function printValue(v: Value, where: string): string {
  if (v === null || v === undefined) return "";
  if (typeof v === "string") return v;
  if (typeof v === "boolean") return String(v);
  if (typeof v === "number") return formatFloat(v);
  if (v instanceof GoInt) return String(v.value);
  throw new Error(`${where}: printing a ${Array.isArray(v) ? "list" : "map"} directly (Go would print map[...]); use toYaml or toJson`);
}

/** Go's strconv.Quote for the characters a chart meets (JSON's escaping agrees with it on ASCII). */
function goQuote(s: string, where: string): string {
  if (/[^\x20-\x7e]/.test(s.replace(/[\n\t\r]/g, ""))) throw new Error(`${where}: quoting non-ASCII text is outside the supported subset`);
  return JSON.stringify(s);
}

function strval(v: Value, where: string): string {
  return printValue(v, where);
}

class FilesObject {
  private readonly read: (path: string) => string;
  constructor(read: (path: string) => string) {
    this.read = read;
  }
  Get(path: Value): string {
    if (typeof path !== "string") throw new Error(".Files.Get needs a path");
    return this.read(path);
  }
}

function sortedYamlValue(v: Value): Value {
  if (Array.isArray(v)) return v.map(sortedYamlValue);
  if (v instanceof GoInt) return v.value;
  if (isMap(v)) return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortedYamlValue(v[k])]));
  return v;
}

/** Helm's toYaml: sigs.k8s.io/yaml (keys sorted), YAML 1.1 quoting, trailing newline removed. */
function toYaml(v: Value): string {
  if (v === null || v === undefined) return "null";
  const doc = new Document(sortedYamlValue(v), { version: "1.1" });
  return doc.toString({ lineWidth: 0 }).replace(/\n$/, "");
}

/** Go's encoding/json: keys sorted, and <, >, & escaped as \u003c, \u003e, \u0026. */
function toJson(v: Value): string {
  return JSON.stringify(sortedYamlValue(v) ?? null).replace(/[<>&]/g, (c) => `\\u00${c.charCodeAt(0).toString(16)}`);
}

function comparable(a: Value, b: Value, where: string): void {
  const kind = (v: Value): string => (typeof v === "string" ? "string" : typeof v === "boolean" ? "bool" : v === null || v === undefined ? "nil" : "other");
  if (kind(a) !== kind(b) || kind(a) === "other" || kind(a) === "nil") {
    throw new Error(`${where}: eq/ne on ${kind(a)} and ${kind(b)} is outside the supported subset (Go compares numbers by type)`);
  }
}

function printf(where: string, format: Value, ...args: Value[]): string {
  if (typeof format !== "string") throw new Error(`${where}: printf format must be a string`);
  let n = 0;
  const out = format.replace(/%([%svdq])/g, (_, verb: string) => {
    if (verb === "%") return "%";
    if (n >= args.length) throw new Error(`${where}: printf "${format}" has too few arguments`);
    const arg = args[n++];
    switch (verb) {
      case "s":
        if (typeof arg !== "string") throw new Error(`${where}: printf %s of a non-string (Go prints %!s(...)); use %v`);
        return arg;
      case "d":
        if (!(arg instanceof GoInt)) throw new Error(`${where}: printf %d of a non-int (values are float64 in Helm); use %v`);
        return String(arg.value);
      case "q":
        if (typeof arg !== "string") throw new Error(`${where}: printf %q of a non-string`);
        return goQuote(arg, where);
      default:
        return printValue(arg, where);
    }
  });
  if (/%[^%svdq]/.test(format.replace(/%%/g, ""))) throw new Error(`${where}: printf verb in "${format}" is outside the supported subset`);
  if (n !== args.length) throw new Error(`${where}: printf "${format}" has extra arguments`);
  return out;
}

function num(v: Value, where: string): number {
  if (v instanceof GoInt) return v.value;
  if (typeof v === "number") return v;
  throw new Error(`${where}: expected a number`);
}

type Fn = (where: string, ...args: Value[]) => Value;

const FUNCTIONS: Record<string, Fn> = {
  toYaml: (_w, v) => toYaml(v),
  toJson: (_w, v) => toJson(v),
  // Sprig: every line, empty ones too, gets the padding.
  indent: (w, n, s) => {
    const pad = " ".repeat(num(n, w));
    return pad + strval(s, w).replace(/\n/g, `\n${pad}`);
  },
  nindent: (w, n, s) => `\n${FUNCTIONS.indent!(w, n, s) as string}`,
  quote: (w, ...vs) =>
    vs
      .filter((v) => v !== null && v !== undefined)
      .map((v) => goQuote(strval(v, w), w))
      .join(" "),
  default: (_w, d, given) => (empty(given) ? d : given),
  required: (w, message, v) => {
    if (v === null || v === undefined || v === "") throw new Error(`${w}: required: ${String(message)}`);
    return v;
  },
  ternary: (w, a, b, cond) => {
    if (typeof cond !== "boolean") throw new Error(`${w}: ternary needs a boolean condition`);
    return cond ? a : b;
  },
  printf: (w, format, ...args) => printf(w, format, ...args),
  trunc: (w, n, s) => {
    const str = strval(s, w);
    const c = num(n, w);
    return c >= 0 ? str.slice(0, c) : str.slice(Math.max(0, str.length + c));
  },
  trimSuffix: (w, suffix, s) => {
    const str = strval(s, w);
    const suf = strval(suffix, w);
    return suf !== "" && str.endsWith(suf) ? str.slice(0, -suf.length) : str;
  },
  replace: (w, from, to, s) => strval(s, w).split(strval(from, w)).join(strval(to, w)),
  contains: (w, sub, s) => strval(s, w).includes(strval(sub, w)),
  join: (w, sep, list) => {
    if (list === null || list === undefined) return "";
    if (!Array.isArray(list)) throw new Error(`${w}: join needs a list`);
    return list.map((x) => strval(x, w)).join(strval(sep, w));
  },
  omit: (w, map, ...keys) => {
    if (!isMap(map)) throw new Error(`${w}: omit needs a map`);
    return Object.fromEntries(Object.entries(map).filter(([k]) => !keys.includes(k)));
  },
  index: (w, coll, ...keys) => {
    let v = coll;
    for (const k of keys) {
      if (isMap(v) && typeof k === "string") v = Object.hasOwn(v, k) ? v[k] : null;
      else if (Array.isArray(v) && k instanceof GoInt) {
        if (k.value < 0 || k.value >= v.length) throw new Error(`${w}: index out of range`);
        v = v[k.value];
      } else throw new Error(`${w}: index of ${v === null || v === undefined ? "nil" : typeof v} is an error in Go`);
    }
    return v;
  },
  hasKey: (w, map, key) => {
    if (!isMap(map)) throw new Error(`${w}: hasKey needs a map`);
    return Object.hasOwn(map, strval(key, w));
  },
  eq: (w, a, b) => {
    comparable(a, b, w);
    return a === b;
  },
  ne: (w, a, b) => {
    comparable(a, b, w);
    return a !== b;
  },
  not: (_w, v) => !truthy(v),
  sha256sum: (w, s) => createHash("sha256").update(strval(s, w)).digest("hex"),
  // and/or are evaluated lazily in evalCommand (Go 1.18+ short-circuits them); these never run.
  and: () => undefined,
  or: () => undefined,
};

class Renderer {
  private readonly ctx: Context;
  constructor(ctx: Context) {
    this.ctx = ctx;
  }

  render(nodes: Node[], dot: Value, scopes: Scope[]): string {
    let out = "";
    for (const node of nodes) {
      switch (node.type) {
        case "text":
          out += node.text;
          break;
        case "output": {
          const v = this.evalPipeline(node.pipeline, dot, scopes);
          if (node.pipeline.declare.length === 0) out += printValue(v, node.pipeline.where);
          break;
        }
        case "if": {
          const inner = [...scopes, new Map<string, Value>()];
          const branch = node.branches.find((b) => truthy(this.evalPipeline(b.pipeline, dot, inner)));
          out += this.render(branch ? branch.body : node.otherwise, dot, inner);
          break;
        }
        case "with": {
          const inner = [...scopes, new Map<string, Value>()];
          const v = this.evalPipeline(node.pipeline, dot, inner);
          out += truthy(v) ? this.render(node.body, v, inner) : this.render(node.otherwise, dot, inner);
          break;
        }
        case "range": {
          const declare = node.pipeline.declare;
          const v = this.evalPipeline({ ...node.pipeline, declare: [] }, dot, scopes);
          const entries: Array<[Value, Value]> = Array.isArray(v)
            ? v.map((x, i) => [new GoInt(i), x])
            : isMap(v)
              ? Object.keys(v)
                  .sort()
                  .map((k) => [k, v[k]])
              : v === null || v === undefined
                ? []
                : (() => {
                    throw new Error(`${node.pipeline.where}: range over ${typeof v} is outside the supported subset`);
                  })();
          if (entries.length === 0) {
            out += this.render(node.otherwise, dot, [...scopes, new Map<string, Value>()]);
            break;
          }
          for (const [key, value] of entries) {
            const scope: Scope = new Map<string, Value>();
            if (declare.length === 1) scope.set(declare[0]!, value);
            if (declare.length === 2) {
              scope.set(declare[0]!, key);
              scope.set(declare[1]!, value);
            }
            out += this.render(node.body, value, [...scopes, scope]);
          }
          break;
        }
      }
    }
    return out;
  }

  include(name: Value, data: Value, where: string): string {
    if (typeof name !== "string") throw new Error(`${where}: include needs a template name`);
    const body = this.ctx.defines.get(name);
    if (body === undefined) throw new Error(`${where}: no template "${name}"`);
    return this.render(body, data, [new Map([["$", data]])]);
  }

  evalPipeline(p: Pipeline, dot: Value, scopes: Scope[]): Value {
    let value: Value = undefined;
    p.commands.forEach((command, i) => {
      value = this.evalCommand(command, dot, scopes, p.where, i === 0 ? [] : [value]);
    });
    if (p.declare.length > 1) throw new Error(`${p.where}: two variables outside range`);
    if (p.declare.length === 1) scopes.at(-1)!.set(p.declare[0]!, value);
    return value;
  }

  evalCommand(command: Operand[], dot: Value, scopes: Scope[], where: string, piped: Value[]): Value {
    const [head, ...rest] = command;
    if (head === undefined) throw new Error(`${where}: empty command`);
    if (head.type === "function") {
      if (head.name === "and" || head.name === "or") {
        const thunks = [...rest.map((o) => () => this.evalOperand(o, dot, scopes, where)), ...piped.map((v) => () => v)];
        let v: Value = undefined;
        for (const thunk of thunks) {
          v = thunk();
          if (head.name === "and" ? !truthy(v) : truthy(v)) return v;
        }
        return v;
      }
      const args = [...rest.map((o) => this.evalOperand(o, dot, scopes, where)), ...piped];
      if (head.name === "include") return this.include(args[0], args[1], where);
      return FUNCTIONS[head.name]!(where, ...args);
    }
    // A method call: .Files.Get "path".
    if (head.type === "field" && (rest.length > 0 || piped.length > 0)) {
      const method = head.fields.at(-1);
      const receiver = this.evalOperand({ ...head, fields: head.fields.slice(0, -1) }, dot, scopes, where);
      if (receiver instanceof FilesObject && method === "Get") {
        return receiver.Get([...rest.map((o) => this.evalOperand(o, dot, scopes, where)), ...piped][0]);
      }
      throw new Error(`${where}: can't give arguments to non-function ${head.fields.join(".")}`);
    }
    if (rest.length > 0 || piped.length > 0) throw new Error(`${where}: can't give arguments to a non-function`);
    return this.evalOperand(head, dot, scopes, where);
  }

  evalOperand(o: Operand, dot: Value, scopes: Scope[], where: string): Value {
    switch (o.type) {
      case "literal":
        return o.value;
      case "pipeline":
        return this.evalPipeline(o.pipeline, dot, scopes);
      case "function":
        return this.evalCommand([o], dot, scopes, where, []);
      case "field": {
        let v: Value;
        if (o.base === "dot") v = dot;
        else {
          const scope = [...scopes].reverse().find((s) => s.has(o.name));
          if (scope === undefined) throw new Error(`${where}: undefined variable ${o.name}`);
          v = scope.get(o.name);
        }
        for (const field of o.fields) {
          if (v === null || v === undefined) throw new Error(`${where}: nil pointer evaluating interface {}.${field}`);
          if (v instanceof FilesObject) throw new Error(`${where}: .Files.${field} is outside the supported subset`);
          if (!isMap(v)) throw new Error(`${where}: can't evaluate field ${field} in type ${Array.isArray(v) ? "[]interface {}" : typeof v}`);
          v = Object.hasOwn(v, field) ? v[field] : null;
        }
        return v;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Charts

export interface RenderOptions {
  /** Overrides merged over values.yaml (as `-f file` / `--set` would). */
  values?: Record<string, unknown>;
  release?: { name?: string; namespace?: string };
}

export interface RenderedChart {
  /** Every manifest, with the template file it came from. */
  manifests: Array<{ template: string; object: Record<string, unknown> }>;
  notes: string;
  /** The merged values the templates saw (what values.schema.json must accept). */
  values: Record<string, unknown>;
}

/** YAML as Helm reads it (sigs.k8s.io/yaml on go-yaml v2: YAML 1.1, so `on`/`yes` are booleans). */
export function parseYaml11(text: string): unknown {
  return parseYaml(text, { version: "1.1" }) as unknown;
}

/** Helm's coalescing of values: maps merge key by key, a null override deletes, anything else replaces. */
export function mergeValues(base: unknown, override: unknown): unknown {
  if (!isMap(base) || !isMap(override)) return override === undefined ? base : override;
  const out: Record<string, unknown> = { ...base };
  for (const [k, v] of Object.entries(override)) {
    if (v === null) delete out[k];
    else out[k] = mergeValues(base[k], v);
  }
  return out;
}

export function renderChart(chartDir: string, opts: RenderOptions = {}): RenderedChart {
  const chart = parseYaml11(readFileSync(join(chartDir, "Chart.yaml"), "utf8")) as Record<string, unknown>;
  const defaults = parseYaml11(readFileSync(join(chartDir, "values.yaml"), "utf8")) as Record<string, unknown>;
  const values = mergeValues(defaults, opts.values ?? {}) as Record<string, unknown>;
  const capitalised = Object.fromEntries(Object.entries(chart).map(([k, v]) => [k.charAt(0).toUpperCase() + k.slice(1), v]));
  const root = {
    Values: values,
    Chart: capitalised,
    Release: { Name: opts.release?.name ?? "mirror", Namespace: opts.release?.namespace ?? "registry", Service: "Helm", IsInstall: true, IsUpgrade: false, Revision: 1 },
    Files: new FilesObject((path) => {
      const full = join(chartDir, path);
      // Helm returns "" for a missing file; an error here catches a wrong path instead of shipping nothing.
      if (!existsSync(full)) throw new Error(`.Files.Get: ${path} does not exist in the chart`);
      return readFileSync(full, "utf8");
    }),
  };

  const defines = new Map<string, Node[]>();
  const templatesDir = join(chartDir, "templates");
  const parsed = readdirSync(templatesDir)
    .sort()
    .map((file) => ({ file, nodes: parseTemplate(lex(readFileSync(join(templatesDir, file), "utf8"), `templates/${file}`), defines) }));
  const renderer = new Renderer({ defines, files: (p) => root.Files.Get(p) });

  const manifests: RenderedChart["manifests"] = [];
  let notes = "";
  for (const { file, nodes } of parsed) {
    if (file.startsWith("_")) continue;
    const text = renderer.render(nodes, root, [new Map([["$", root]])]);
    if (file === "NOTES.txt") {
      notes = text;
      continue;
    }
    // Helm splits a template's output into documents and drops the blank ones.
    for (const doc of parseAllDocuments(text, { version: "1.1" })) {
      if (doc.errors.length > 0) throw new Error(`templates/${file}: rendered YAML does not parse: ${doc.errors.map((e) => e.message).join("; ")}\n${text}`);
      const object = doc.toJS() as unknown;
      if (object === null || object === undefined) {
        if (doc.toString().replace(/#.*$/gm, "").trim() !== "") throw new Error(`templates/${file}: a document without content`);
        continue;
      }
      if (!isMap(object)) throw new Error(`templates/${file}: a document that is not a mapping`);
      manifests.push({ template: `templates/${file}`, object });
    }
  }
  return { manifests, notes, values };
}
