// helm-render: renders a Helm chart the way `helm template` does, with Go's text/template, the sprig v3
// function library and Helm's own template functions, re-implemented from Helm 3's pkg/engine,
// pkg/chartutil and pkg/releaseutil (read for semantics; this is an independent, smaller implementation).
//
// Usage: helm-render CHART_DIR [-f values.yaml]... [--set a.b=c]... [--set-string a=b]...
//
//	[--release-name NAME] [--namespace NS] [--kube-version v1.30.0] [--api-versions g/v]...
//	[--skip-schema] [--show-notes]
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/BurntSushi/toml"
	"github.com/Masterminds/semver/v3"
	"github.com/Masterminds/sprig"
	"github.com/ghodss/yaml"
	"github.com/xeipuuv/gojsonschema"
)

// ---------------------------------------------------------------------------------------------------
// Chart metadata: Helm's chart.Metadata, so .Chart.<Field> has Helm's capitalised field names.

type Maintainer struct {
	Name  string `json:"name,omitempty"`
	Email string `json:"email,omitempty"`
	URL   string `json:"url,omitempty"`
}

type Dependency struct {
	Name         string        `json:"name"`
	Version      string        `json:"version,omitempty"`
	Repository   string        `json:"repository"`
	Condition    string        `json:"condition,omitempty"`
	Tags         []string      `json:"tags,omitempty"`
	Enabled      bool          `json:"enabled,omitempty"`
	ImportValues []interface{} `json:"import-values,omitempty"`
	Alias        string        `json:"alias,omitempty"`
}

type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []*Maintainer     `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []*Dependency     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// ---------------------------------------------------------------------------------------------------
// Capabilities (chartutil.Capabilities)

type KubeVersion struct {
	Version string
	Major   string
	Minor   string
}

func (kv *KubeVersion) String() string     { return kv.Version }
func (kv *KubeVersion) GitVersion() string { return kv.Version }

type VersionSet []string

func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

type HelmVersion struct {
	Version      string
	GitCommit    string
	GitTreeState string
	GoVersion    string
}

type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
	HelmVersion HelmVersion
}

// The built-in group/versions of a v1.30 API server (what `helm template` reports without a cluster is
// the client-go scheme's list; this is its common subset). Extend with --api-versions.
var defaultAPIVersions = []string{
	"v1", "admissionregistration.k8s.io/v1", "apiextensions.k8s.io/v1", "apiregistration.k8s.io/v1",
	"apps/v1", "authentication.k8s.io/v1", "authorization.k8s.io/v1", "autoscaling/v1", "autoscaling/v2",
	"batch/v1", "certificates.k8s.io/v1", "coordination.k8s.io/v1", "discovery.k8s.io/v1", "events.k8s.io/v1",
	"flowcontrol.apiserver.k8s.io/v1", "flowcontrol.apiserver.k8s.io/v1beta3", "networking.k8s.io/v1",
	"node.k8s.io/v1", "policy/v1", "rbac.authorization.k8s.io/v1", "scheduling.k8s.io/v1", "storage.k8s.io/v1",
}

// ---------------------------------------------------------------------------------------------------
// .Files (engine/files.go)

type Files map[string][]byte

func (f Files) GetBytes(name string) []byte {
	if v, ok := f[name]; ok {
		return v
	}
	return []byte{}
}

func (f Files) Get(name string) string { return string(f.GetBytes(name)) }

func (f Files) Glob(pattern string) Files {
	re, err := globToRegexp(pattern)
	if err != nil {
		re = regexp.MustCompile(`^.*$`)
	}
	nf := Files{}
	for name, contents := range f {
		if re.MatchString(name) {
			nf[name] = contents
		}
	}
	return nf
}

func (f Files) AsConfig() string {
	if f == nil {
		return ""
	}
	m := map[string]string{}
	for k, v := range f {
		m[path.Base(k)] = string(v)
	}
	return toYAML(m)
}

func (f Files) AsSecrets() string {
	if f == nil {
		return ""
	}
	m := map[string]string{}
	for k, v := range f {
		m[path.Base(k)] = base64.StdEncoding.EncodeToString(v)
	}
	return toYAML(m)
}

func (f Files) Lines(name string) []string {
	if f == nil || f[name] == nil {
		return []string{}
	}
	s := string(f[name])
	if len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	return strings.Split(s, "\n")
}

// globToRegexp mirrors gobwas/glob with '/' as separator: * and ? stay within a path segment, ** crosses
// segments, [..] classes ([!..] negated) and {a,b} alternatives.
func globToRegexp(p string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	depth := 0
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '*':
			if i+1 < len(p) && p[i+1] == '*' {
				b.WriteString(".*")
				i++
			} else {
				b.WriteString("[^/]*")
			}
		case '?':
			b.WriteString("[^/]")
		case '[':
			j := strings.IndexByte(p[i:], ']')
			if j < 0 {
				return nil, fmt.Errorf("unclosed [")
			}
			class := p[i+1 : i+j]
			if strings.HasPrefix(class, "!") {
				class = "^" + class[1:]
			}
			b.WriteString("[" + class + "]")
			i += j
		case '{':
			b.WriteString("(?:")
			depth++
		case '}':
			if depth == 0 {
				b.WriteString(regexp.QuoteMeta("}"))
			} else {
				b.WriteString(")")
				depth--
			}
		case ',':
			if depth > 0 {
				b.WriteString("|")
			} else {
				b.WriteString(",")
			}
		case '\\':
			if i+1 < len(p) {
				i++
				b.WriteString(regexp.QuoteMeta(string(p[i])))
			}
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	return regexp.Compile(b.String())
}

// ---------------------------------------------------------------------------------------------------
// Helm's extra template functions (engine/funcs.go)

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromYAMLArray(str string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toTOML(v interface{}) string {
	b := bytes.NewBuffer(nil)
	e := toml.NewEncoder(b)
	if err := e.Encode(v); err != nil {
		return err.Error()
	}
	return b.String()
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(str string) map[string]interface{} {
	m := make(map[string]interface{})
	if err := json.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(str string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func baseFuncMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toToml":        toTOML,
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		// replaced in initFuncMap
		"include":  func(string, interface{}) string { return "not implemented" },
		"tpl":      func(string, interface{}) interface{} { return "not implemented" },
		"required": func(string, interface{}) (interface{}, error) { return "not implemented", nil },
		// `helm template` has no cluster: lookup returns an empty map
		"lookup": func(string, string, string, string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

const (
	warnStartDelim   = "HELM_ERR_START"
	warnEndDelim     = "HELM_ERR_END"
	recursionMaxNums = 1000
)

var warnRegex = regexp.MustCompile(warnStartDelim + `((?s).*)` + warnEndDelim)

func warnWrap(warn string) string { return warnStartDelim + warn + warnEndDelim }

func includeFun(t *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		if v, ok := includedNames[name]; ok {
			if v > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s: unable to execute template", name)
			}
			includedNames[name]++
		} else {
			includedNames[name] = 1
		}
		err := t.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
}

func tplFun(parent *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(tpl string, vals interface{}) (string, error) {
		t, err := parent.Clone()
		if err != nil {
			return "", fmt.Errorf("cannot clone template: %w", err)
		}
		t.Option("missingkey=zero")
		t.Funcs(template.FuncMap{
			"include": includeFun(t, includedNames),
			"tpl":     tplFun(t, includedNames),
		})
		t, err = t.New(parent.Name()).Parse(tpl)
		if err != nil {
			return "", fmt.Errorf("cannot parse template %q: %w", tpl, err)
		}
		var buf strings.Builder
		if err := t.Execute(&buf, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %w", tpl, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
}

func initFuncMap(t *template.Template) {
	funcMap := baseFuncMap()
	includedNames := map[string]int{}
	funcMap["include"] = includeFun(t, includedNames)
	funcMap["tpl"] = tplFun(t, includedNames)
	funcMap["required"] = func(warn string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, errors.New(warnWrap(warn))
		} else if s, ok := val.(string); ok && s == "" {
			return val, errors.New(warnWrap(warn))
		}
		return val, nil
	}
	funcMap["fail"] = func(msg string) (string, error) { return "", errors.New(warnWrap(msg)) }
	// DNS lookups are off by default in Helm (--enable-dns)
	funcMap["getHostByName"] = func(string) string { return "" }
	t.Funcs(funcMap)
}

func cleanupExecError(filename string, err error) error {
	if _, ok := err.(template.ExecError); !ok {
		return err
	}
	tokens := strings.SplitN(err.Error(), ": ", 3)
	if len(tokens) != 3 {
		return fmt.Errorf("execution error in (%s): %s", filename, err)
	}
	if parts := warnRegex.FindStringSubmatch(tokens[2]); len(parts) >= 2 {
		return fmt.Errorf("execution error at (%s): %s", tokens[1], parts[1])
	}
	return err
}

// ---------------------------------------------------------------------------------------------------
// Values (chartutil/values.go, coalesce.go; cli/values/options.go; strvals)

func readValuesFile(p string) (map[string]interface{}, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	m := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("failed to parse %s: %w", p, err)
	}
	if m == nil {
		m = map[string]interface{}{}
	}
	return m, nil
}

func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if v, ok := v.(map[string]interface{}); ok {
			if bv, ok := out[k]; ok {
				if bv, ok := bv.(map[string]interface{}); ok {
					out[k] = mergeMaps(bv, v)
					continue
				}
			}
		}
		out[k] = v
	}
	return out
}

func warnf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "coalesce.go: warning: "+format+"\n", args...)
}

// coalesceValues: user values v win over the chart's defaults; a user null deletes the key.
func coalesceValues(v, defaults map[string]interface{}, prefix string) {
	for key, val := range deepCopy(defaults).(map[string]interface{}) {
		if value, ok := v[key]; ok {
			if value == nil {
				delete(v, key)
			} else if dest, ok := value.(map[string]interface{}); ok {
				src, ok := val.(map[string]interface{})
				if !ok {
					if val != nil {
						warnf("skipped value for %s.%s: Not a table.", prefix, key)
					}
				} else {
					coalesceTables(dest, src, join(prefix, key))
				}
			}
		} else {
			v[key] = val
		}
	}
}

func join(prefix, key string) string {
	if prefix == "" {
		return key
	}
	return prefix + "." + key
}

func coalesceTables(dst, src map[string]interface{}, prefix string) {
	for key, val := range src {
		fullkey := join(prefix, key)
		if dv, ok := dst[key]; ok && dv == nil {
			delete(dst, key)
		} else if !ok {
			dst[key] = val
		} else if sv, ok := val.(map[string]interface{}); ok {
			if dvm, ok := dv.(map[string]interface{}); ok {
				coalesceTables(dvm, sv, fullkey)
			} else {
				warnf("cannot overwrite table with non table for %s (%v)", fullkey, val)
			}
		} else if _, ok := dv.(map[string]interface{}); ok && val != nil {
			warnf("destination for %s is a table. Ignoring non-table value (%v)", fullkey, val)
		}
	}
}

func deepCopy(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, x := range t {
			m[k] = deepCopy(x)
		}
		return m
	case []interface{}:
		l := make([]interface{}, len(t))
		for i, x := range t {
			l[i] = deepCopy(x)
		}
		return l
	}
	return v
}

// --set parsing: a subset of Helm's strvals (dotted keys, name[i] list indexes, {a,b} lists, \ escapes,
// comma-separated assignments), with Helm's typing of --set values.
func typedVal(val string, st bool) interface{} {
	if st {
		return val
	}
	if strings.EqualFold(val, "true") {
		return true
	}
	if strings.EqualFold(val, "false") {
		return false
	}
	if strings.EqualFold(val, "null") {
		return nil
	}
	if strings.EqualFold(val, "0") {
		return int64(0)
	}
	if len(val) != 0 && val[0] != '0' {
		if iv, err := strconv.ParseInt(val, 10, 64); err == nil {
			return iv
		}
	}
	return val
}

type keySeg struct {
	name  string
	index int // -1: map key
}

func parseSet(s string, dst map[string]interface{}, st bool) error {
	r := []rune(s)
	i := 0
	for i < len(r) {
		// key
		var segs []keySeg
		var cur strings.Builder
		for {
			if i >= len(r) {
				return fmt.Errorf("key %q has no value", cur.String())
			}
			c := r[i]
			if c == '\\' && i+1 < len(r) {
				cur.WriteRune(r[i+1])
				i += 2
				continue
			}
			if c == '.' {
				segs = append(segs, keySeg{cur.String(), -1})
				cur.Reset()
				i++
				continue
			}
			if c == '[' {
				j := i + 1
				for j < len(r) && r[j] != ']' {
					j++
				}
				n, err := strconv.Atoi(string(r[i+1 : j]))
				if err != nil || n < 0 {
					return fmt.Errorf("bad list index in %q", s)
				}
				segs = append(segs, keySeg{cur.String(), n})
				cur.Reset()
				i = j + 1
				if i < len(r) && r[i] == '.' {
					i++
				}
				continue
			}
			if c == '=' {
				if cur.Len() > 0 || len(segs) == 0 {
					segs = append(segs, keySeg{cur.String(), -1})
				}
				i++
				break
			}
			if c == ',' {
				return fmt.Errorf("key %q has no value (cannot end with ,)", cur.String())
			}
			cur.WriteRune(c)
			i++
		}
		// value
		var val interface{}
		if i < len(r) && r[i] == '{' {
			j := i + 1
			var list []interface{}
			var item strings.Builder
			for j < len(r) && r[j] != '}' {
				if r[j] == '\\' && j+1 < len(r) {
					item.WriteRune(r[j+1])
					j += 2
					continue
				}
				if r[j] == ',' {
					list = append(list, typedVal(item.String(), st))
					item.Reset()
				} else {
					item.WriteRune(r[j])
				}
				j++
			}
			if item.Len() > 0 || len(list) > 0 {
				list = append(list, typedVal(item.String(), st))
			}
			if list == nil {
				list = []interface{}{}
			}
			val = list
			i = j + 1
		} else {
			var v strings.Builder
			for i < len(r) && r[i] != ',' {
				if r[i] == '\\' && i+1 < len(r) {
					v.WriteRune(r[i+1])
					i += 2
					continue
				}
				v.WriteRune(r[i])
				i++
			}
			val = typedVal(v.String(), st)
		}
		if i < len(r) && r[i] == ',' {
			i++
		}
		setPath(dst, segs, val)
	}
	return nil
}

func setPath(m map[string]interface{}, segs []keySeg, val interface{}) {
	seg := segs[0]
	last := len(segs) == 1
	if seg.index < 0 {
		if last {
			m[seg.name] = val
			return
		}
		child, ok := m[seg.name].(map[string]interface{})
		if !ok {
			child = map[string]interface{}{}
			m[seg.name] = child
		}
		setPath(child, segs[1:], val)
		return
	}
	list, _ := m[seg.name].([]interface{})
	for len(list) <= seg.index {
		list = append(list, nil)
	}
	if last {
		list[seg.index] = val
	} else {
		child, ok := list[seg.index].(map[string]interface{})
		if !ok {
			child = map[string]interface{}{}
		}
		setPath(child, segs[1:], val)
		list[seg.index] = child
	}
	m[seg.name] = list
}

// ---------------------------------------------------------------------------------------------------
// Chart loading

type helmignore struct{ rules []string }

func loadHelmignore(dir string) *helmignore {
	h := &helmignore{rules: []string{"templates/.?*"}}
	data, err := os.ReadFile(filepath.Join(dir, ".helmignore"))
	if err != nil {
		return h
	}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "!") {
			continue
		}
		h.rules = append(h.rules, line)
	}
	return h
}

// ignored: a simplified version of Helm's pkg/ignore (no negation): a rule with a slash matches the
// relative path, one without matches the base name; a trailing slash matches directories only.
func (h *helmignore) ignored(rel string, isDir bool) bool {
	for _, rule := range h.rules {
		r := rule
		if strings.HasSuffix(r, "/") {
			if !isDir {
				continue
			}
			r = strings.TrimSuffix(r, "/")
		}
		r = strings.TrimPrefix(r, "/")
		if strings.Contains(r, "/") {
			if ok, _ := filepath.Match(r, rel); ok {
				return true
			}
		} else if ok, _ := filepath.Match(r, filepath.Base(rel)); ok {
			return true
		}
	}
	return false
}

type chartData struct {
	dir       string
	meta      *Metadata
	values    map[string]interface{}
	schema    []byte
	templates map[string]string // "templates/x.yaml" -> source
	files     Files
}

func loadChart(dir string) (*chartData, error) {
	c := &chartData{dir: dir, templates: map[string]string{}, files: Files{}, values: map[string]interface{}{}}
	raw, err := os.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, fmt.Errorf("Chart.yaml file is missing: %w", err)
	}
	c.meta = &Metadata{}
	if err := yaml.Unmarshal(raw, c.meta); err != nil {
		return nil, fmt.Errorf("cannot load Chart.yaml: %w", err)
	}
	if c.meta.Name == "" {
		return nil, errors.New("validation: chart.metadata.name is required")
	}
	ign := loadHelmignore(dir)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		if ign.ignored(rel, d.IsDir()) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if rel == "charts" {
				fmt.Fprintln(os.Stderr, "helm-render: warning: subcharts in charts/ are not supported; ignored")
				return filepath.SkipDir
			}
			return nil
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		switch {
		case rel == "Chart.yaml", rel == "Chart.lock", rel == "requirements.yaml", rel == "requirements.lock", rel == ".helmignore":
		case rel == "values.yaml":
			m := map[string]interface{}{}
			if err := yaml.Unmarshal(data, &m); err != nil {
				return fmt.Errorf("cannot load values.yaml: %w", err)
			}
			if m != nil {
				c.values = m
			}
		case rel == "values.schema.json":
			c.schema = data
		case strings.HasPrefix(rel, "templates/"):
			c.templates[rel] = string(data)
		default:
			c.files[rel] = data
		}
		return nil
	})
	return c, err
}

// ---------------------------------------------------------------------------------------------------
// Rendering (engine.render) and output (releaseutil.SplitManifests / SortManifests, `helm template`)

func render(c *chartData, top map[string]interface{}) (map[string]string, []string, error) {
	t := template.New("gotpl")
	t.Option("missingkey=zero")
	initFuncMap(t)
	var keys []string
	for rel := range c.templates {
		keys = append(keys, path.Join(c.meta.Name, rel))
	}
	sort.Strings(keys)
	for _, name := range keys {
		rel := strings.TrimPrefix(name, c.meta.Name+"/")
		if _, err := t.New(name).Parse(c.templates[rel]); err != nil {
			return nil, nil, fmt.Errorf("parse error: %w", err)
		}
	}
	out := map[string]string{}
	var order []string
	for _, name := range keys {
		if strings.HasPrefix(path.Base(name), "_") {
			continue
		}
		vals := map[string]interface{}{}
		for k, v := range top {
			vals[k] = v
		}
		vals["Template"] = map[string]interface{}{"Name": name, "BasePath": path.Join(c.meta.Name, "templates")}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, name, vals); err != nil {
			return nil, nil, cleanupExecError(name, err)
		}
		out[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
		order = append(order, name)
	}
	return out, order, nil
}

var sep = regexp.MustCompile("(?:^|\\s*\n)---\\s*")

func splitManifests(big string) []string {
	var res []string
	for _, d := range sep.Split(strings.TrimSpace(big), -1) {
		if d == "" {
			continue
		}
		d = strings.TrimSpace(d)
		if d == "" {
			continue
		}
		res = append(res, d)
	}
	return res
}

var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
	"PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
	"PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList",
	"ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList",
	"Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
	"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
}

type manifest struct {
	name    string
	content string
	kind    string
	hook    bool
}

type simpleHead struct {
	Version  string `json:"apiVersion"`
	Kind     string `json:"kind,omitempty"`
	Metadata *struct {
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata,omitempty"`
}

func lessByKind(a, b manifest) bool {
	rank := map[string]int{}
	for i, k := range installOrder {
		rank[k] = i
	}
	ra, aok := rank[a.kind]
	rb, bok := rank[b.kind]
	switch {
	case !aok && !bok:
		if a.kind != b.kind {
			return a.kind < b.kind
		}
		return a.name < b.name
	case !aok:
		return false
	case !bok:
		return true
	case ra == rb:
		return a.name < b.name
	}
	return ra < rb
}

// ---------------------------------------------------------------------------------------------------

type stringList []string

func usage() {
	fmt.Fprintln(os.Stderr, "usage: helm-render CHART_DIR [-f values.yaml]... [--set a.b=c]... [--set-string a=b]... [--release-name NAME] [--namespace NS] [--kube-version v1.30.0] [--api-versions group/version]... [--skip-schema] [--show-notes] [--show-values]")
	os.Exit(2)
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "Error: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	var chartDir string
	var valueFiles, sets, setStrings, apiVersions stringList
	releaseName, namespace, kubeVersion := "release-name", "default", "v1.30.0"
	skipSchema, showNotes, showValues := false, false, false
	var args []string
	for _, a := range os.Args[1:] {
		if k, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(a, "--") {
			args = append(args, k, v)
		} else {
			args = append(args, a)
		}
	}
	next := func(i *int, flag string) string {
		if *i+1 >= len(args) {
			fail("flag %s needs an argument", flag)
		}
		*i++
		return args[*i]
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch a {
		case "-f", "--values":
			valueFiles = append(valueFiles, next(&i, a))
		case "--set":
			sets = append(sets, next(&i, a))
		case "--set-string":
			setStrings = append(setStrings, next(&i, a))
		case "--release-name", "--name":
			releaseName = next(&i, a)
		case "-n", "--namespace":
			namespace = next(&i, a)
		case "--kube-version":
			kubeVersion = next(&i, a)
		case "-a", "--api-versions":
			apiVersions = append(apiVersions, next(&i, a))
		case "--skip-schema":
			skipSchema = true
		case "--show-notes":
			showNotes = true
		case "--show-values":
			showValues = true
		case "-h", "--help":
			usage()
		default:
			if strings.HasPrefix(a, "-") || chartDir != "" {
				usage()
			}
			chartDir = a
		}
	}
	if chartDir == "" {
		usage()
	}

	c, err := loadChart(chartDir)
	if err != nil {
		fail("%v", err)
	}

	// user values: -f files merged in order, then --set, then --set-string (cli/values/options.go)
	user := map[string]interface{}{}
	for _, f := range valueFiles {
		m, err := readValuesFile(f)
		if err != nil {
			fail("%v", err)
		}
		user = mergeMaps(user, m)
	}
	for _, s := range sets {
		if err := parseSet(s, user, false); err != nil {
			fail("failed parsing --set data: %v", err)
		}
	}
	for _, s := range setStrings {
		if err := parseSet(s, user, true); err != nil {
			fail("failed parsing --set-string data: %v", err)
		}
	}
	vals := deepCopy(user).(map[string]interface{})
	coalesceValues(vals, c.values, "")

	if c.schema != nil && !skipSchema {
		res, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(c.schema), gojsonschema.NewGoLoader(vals))
		if err != nil {
			fail("values.schema.json: %v", err)
		}
		if !res.Valid() {
			var b strings.Builder
			b.WriteString("values don't meet the specifications of the schema(s) in the following chart(s):\n" + c.meta.Name + ":\n")
			for _, e := range res.Errors() {
				b.WriteString("- " + e.String() + "\n")
			}
			fail("%s", b.String())
		}
	}

	// --show-values: the values the templates would see (user values coalesced over the chart's), as JSON, in
	// place of the manifests; what `helm get values --all` shows after an install.
	if showValues {
		b, err := json.MarshalIndent(vals, "", "  ")
		if err != nil {
			fail("%v", err)
		}
		os.Stdout.Write(append(b, '\n'))
		return
	}

	kv := strings.TrimPrefix(kubeVersion, "v")
	parts := strings.SplitN(kv, ".", 3)
	if len(parts) < 2 {
		fail("invalid --kube-version %q", kubeVersion)
	}
	caps := &Capabilities{
		KubeVersion: KubeVersion{Version: "v" + kv, Major: parts[0], Minor: parts[1]},
		APIVersions: append(append(VersionSet{}, defaultAPIVersions...), apiVersions...),
		HelmVersion: HelmVersion{Version: "v3.16.0", GoVersion: "go1.19"},
	}
	// action.Install: the chart's kubeVersion constraint must accept the target Kubernetes version
	if c.meta.KubeVersion != "" {
		cons, err := semver.NewConstraint(c.meta.KubeVersion)
		if err != nil {
			fail("invalid kubeVersion %q in Chart.yaml: %v", c.meta.KubeVersion, err)
		}
		v, err := semver.NewVersion(caps.KubeVersion.Version)
		if err != nil {
			fail("invalid --kube-version %q: %v", kubeVersion, err)
		}
		if !cons.Check(v) {
			fail("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", c.meta.KubeVersion, caps.KubeVersion.Version)
		}
	}
	top := map[string]interface{}{
		"Chart":        c.meta,
		"Capabilities": caps,
		"Release": map[string]interface{}{
			"Name": releaseName, "Namespace": namespace, "IsUpgrade": false, "IsInstall": true,
			"Revision": 1, "Service": "Helm",
		},
		"Values":    vals,
		"Files":     c.files,
		"Subcharts": map[string]interface{}{},
	}

	rendered, order, err := render(c, top)
	if err != nil {
		fail("%v", err)
	}

	var manifests, hooks []manifest
	notes := ""
	for _, name := range order {
		content := rendered[name]
		if strings.HasSuffix(name, "NOTES.txt") {
			notes = content
			continue
		}
		if strings.TrimSpace(content) == "" {
			continue
		}
		for _, d := range splitManifests(content) {
			var head simpleHead
			if err := yaml.Unmarshal([]byte(d), &head); err != nil {
				fail("YAML parse error on %s: %v", name, err)
			}
			m := manifest{name: name, content: d, kind: head.Kind}
			if head.Metadata != nil && head.Metadata.Annotations["helm.sh/hook"] != "" {
				m.hook = true
				hooks = append(hooks, m)
			} else {
				manifests = append(manifests, m)
			}
		}
	}
	sort.SliceStable(manifests, func(i, j int) bool { return lessByKind(manifests[i], manifests[j]) })
	sort.SliceStable(hooks, func(i, j int) bool { return lessByKind(hooks[i], hooks[j]) })
	var out strings.Builder
	for _, m := range append(manifests, hooks...) {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", m.name, m.content)
	}
	if showNotes && notes != "" {
		fmt.Fprintf(&out, "\nNOTES:\n%s\n", notes)
	}
	os.Stdout.WriteString(out.String())
}
