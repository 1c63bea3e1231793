// Package httpjson decodes and validates the JSON bodies of the HTTP API
// with errors a person can act on: which field, what was expected, and
// never a validator's or decoder's internals (Go type and struct names).
package httpjson

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"

	"github.com/go-playground/validator/v10"
)

// Decode reads one JSON object from body into dst, refusing fields dst
// does not have. shape describes the expected body for the error, as
// `{"topic": string, "event": string}`.
func Decode(body io.Reader, dst any, shape string) error {
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	err := dec.Decode(dst)
	if err == nil {
		return nil
	}
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.Is(err, io.EOF):
		return fmt.Errorf("empty body: expected JSON %s", shape)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return fmt.Errorf("the body ends in the middle of its JSON: expected %s", shape)
	case errors.As(err, &syntaxErr):
		return fmt.Errorf("the body is not valid JSON (at byte %d): expected %s", syntaxErr.Offset, shape)
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return fmt.Errorf("%q must be %s, not %s: expected %s", typeErr.Field, kindOf(typeErr.Type), article(typeErr.Value), shape)
	case errors.As(err, &typeErr):
		return fmt.Errorf("the body must be a JSON object, not %s: expected %s", article(typeErr.Value), shape)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Errorf("unknown field %s: expected %s", name, shape)
	}
	return fmt.Errorf("the body is not the JSON expected (%v): expected %s", err, shape)
}

// Validate checks s (a struct) with v and describes the first problem by
// the field's JSON name: `"event" is required`.
func Validate(v *validator.Validate, s any) error {
	err := v.Struct(s)
	var fes validator.ValidationErrors
	if err == nil || !errors.As(err, &fes) || len(fes) == 0 {
		return err
	}
	fe := fes[0]
	name := jsonName(s, fe.StructField())
	switch fe.Tag() {
	case "required":
		return fmt.Errorf("%q is required", name)
	case "max", "min":
		bound := "at most"
		if fe.Tag() == "min" {
			bound = "at least"
		}
		unit := "characters"
		if k := fe.Kind(); k == reflect.Slice || k == reflect.Map || k == reflect.Array {
			unit = "items"
		}
		return fmt.Errorf("%q must have %s %s %s", name, bound, fe.Param(), unit)
	}
	return fmt.Errorf("%q is not valid (%s)", name, fe.Tag())
}

// jsonName is the JSON name of the struct field of s called field.
func jsonName(s any, field string) string {
	t := reflect.TypeOf(s)
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t != nil && t.Kind() == reflect.Struct {
		if f, ok := t.FieldByName(field); ok {
			if name, _, _ := strings.Cut(f.Tag.Get("json"), ","); name != "" && name != "-" {
				return name
			}
		}
	}
	return field
}

// kindOf names a Go type as JSON calls it.
func kindOf(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	}
	return "an object"
}

// article puts "a"/"an" before a JSON value kind ("number" → "a number").
func article(kind string) string {
	if kind == "" {
		return "this value"
	}
	if strings.ContainsRune("aeiou", rune(kind[0])) {
		return "an " + kind
	}
	return "a " + kind
}
