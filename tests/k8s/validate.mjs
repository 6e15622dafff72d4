// Validates Kubernetes objects offline with the pinned npm packages
// (package.json): kubernetes-models (the Kubernetes API), @kubernetes-models/
// keda (KEDA's CRDs) and @kubernetes-models/prometheus-operator (the
// Prometheus Operator's CRDs). Two checks per object:
//
// 1. the JSON schema bundled with its model (types, required fields, enums,
//    formats);
// 2. unknown fields: the schemas, like the API's OpenAPI, allow any extra
//    property, so a misspelt `readinesProbe` would pass them (and be
//    rejected, or silently dropped, by a real API server). Each object is
//    type-checked as a TypeScript object literal against its model's
//    interface, and TypeScript's excess-property check names every field the
//    API does not have.
//
// Input on stdin: a JSON object mapping a label (which kustomization) to the
// array of objects it renders (tests/it/kubernetes.rs renders them and converts
// the YAML). Output: one line per problem, "label: Kind/name: problem"; exit
// status 1 if there was any, 0 otherwise. An apiVersion/kind with no bundled
// schema is a problem, never skipped.
//
// Usage: node validate.mjs < objects.json

// Which package holds the models of an API group. The core group ("v1") and
// the built-in groups are in kubernetes-models; a CRD group has its own.
const CRD_PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

function modulePath(apiVersion, kind) {
  const slash = apiVersion.indexOf("/");
  if (slash < 0) return `kubernetes-models/${apiVersion}/${kind}`;
  const group = apiVersion.slice(0, slash);
  const pkg = CRD_PACKAGES[group] ?? "kubernetes-models";
  return `${pkg}/${apiVersion}/${kind}`;
}

async function model(apiVersion, kind) {
  const path = modulePath(apiVersion, kind);
  try {
    const mod = await import(path);
    return mod[kind] ?? null;
  } catch (e) {
    if (e.code === "ERR_PACKAGE_PATH_NOT_EXPORTED" || e.code === "ERR_MODULE_NOT_FOUND") {
      return null;
    }
    throw e;
  }
}

function describe(error) {
  const where = error.instancePath || "/";
  const params = error.params && Object.keys(error.params).length ? ` ${JSON.stringify(error.params)}` : "";
  return `${where} ${error.message}${params}`;
}

async function validate(object) {
  const { apiVersion, kind } = object ?? {};
  const name = `${kind ?? "?"}/${object?.metadata?.name ?? "?"}`;
  if (typeof apiVersion !== "string" || typeof kind !== "string") {
    return { modelled: false, problems: [`${name}: no apiVersion or kind`] };
  }
  const Model = await model(apiVersion, kind);
  if (!Model || !Model.is(object)) {
    return { modelled: false, problems: [`${name}: no schema for ${apiVersion} ${kind} in the pinned packages`] };
  }
  try {
    new Model(object).validate();
    return { modelled: true, problems: [] };
  } catch (e) {
    const errors = Array.isArray(e.errors) ? e.errors : [{ instancePath: "", message: String(e.message) }];
    return { modelled: true, problems: errors.map((err) => `${name}: ${describe(err)}`) };
  }
}

// Type-checks every object as `const oN: IKind = {...}` in one in-memory
// TypeScript file (one object per line, so a diagnostic's line names its
// object) and returns the problems TypeScript finds.
async function unknownFields(labelled) {
  const ts = (await import("typescript")).default;
  const here = new URL(".", import.meta.url).pathname;
  const file = `${here}__rendered_objects__.ts`;
  const lines = labelled.map(({ object: o }, i) => {
    const path = modulePath(o.apiVersion, o.kind);
    return `export const o${i}: import(${JSON.stringify(path)}).I${o.kind} = ${JSON.stringify(o)};`;
  });
  const options = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
  };
  const host = ts.createCompilerHost(options);
  const source = lines.join("\n");
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, version, ...rest) =>
    name === file ? ts.createSourceFile(name, source, version) : getSourceFile.call(host, name, version, ...rest);
  host.fileExists = (name) => name === file || fileExists.call(host, name);
  host.readFile = (name) => (name === file ? source : readFile.call(host, name));
  const program = ts.createProgram([file], options, host);
  return ts.getPreEmitDiagnostics(program).map((d) => {
    const text = ts.flattenDiagnosticMessageText(d.messageText, " ");
    if (!d.file || d.file.fileName !== file) return `typescript: ${text}`;
    const { line } = d.file.getLineAndCharacterOfPosition(d.start ?? 0);
    const { label, object: o } = labelled[line];
    return `${label}: ${o.kind}/${o.metadata?.name ?? "?"}: ${text}`;
  });
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
const renders = JSON.parse(input);
const labelled = Object.entries(renders).flatMap(([label, objects]) =>
  Array.isArray(objects) ? objects.map((object) => ({ label, object })) : [{ label, object: null }],
);
const results = await Promise.all(
  labelled.map(async ({ label, object }) => {
    const { problems, modelled } = await validate(object);
    return { label, object, modelled, problems: problems.map((p) => `${label}: ${p}`) };
  }),
);
// One TypeScript program for every object that has a model (compiling is the
// slow part); objects without one are already reported.
const problems = [
  ...results.flatMap((r) => r.problems),
  ...(await unknownFields(results.filter((r) => r.modelled))),
];
for (const p of problems) console.log(p);
process.exit(problems.length ? 1 : 0);
