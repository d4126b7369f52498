//! `#[require_permission(resource = "...", action = "...")]`.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Expr, ExprAsync, ExprLit, GenericArgument, ItemFn, Lit, LitStr, MetaNameValue, PathArguments, ReturnType, Stmt,
    Token, Type, TypeParamBound,
};

const KEYS: &str = "`resource`, `action`";

/// The checked arguments of the attribute.
pub(crate) struct Args {
    pub(crate) resource: LitStr,
    pub(crate) action: LitStr,
}

pub(crate) fn parse_args(attr: TokenStream) -> syn::Result<Args> {
    let pairs = Punctuated::<MetaNameValue, Token![,]>::parse_terminated.parse2(attr.clone())?;
    let mut resource: Option<LitStr> = None;
    let mut action: Option<LitStr> = None;
    for pair in pairs {
        let Some(key) = pair.path.get_ident() else {
            return Err(syn::Error::new(
                pair.path.span(),
                format!("unknown argument; expected one of {KEYS}"),
            ));
        };
        let slot = match key.to_string().as_str() {
            "resource" => &mut resource,
            "action" => &mut action,
            other => {
                return Err(syn::Error::new(
                    key.span(),
                    format!("unknown argument `{other}`; expected one of {KEYS}"),
                ));
            }
        };
        if slot.is_some() {
            return Err(syn::Error::new(key.span(), format!("duplicate argument `{key}`")));
        }
        let value = match &pair.value {
            Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => s.clone(),
            other => {
                return Err(syn::Error::new(other.span(), format!("`{key}` takes a string literal")));
            }
        };
        if value.value().trim().is_empty() {
            return Err(syn::Error::new(value.span(), format!("`{key}` must not be empty")));
        }
        *slot = Some(value);
    }
    let span = if attr.is_empty() {
        Span::call_site()
    } else {
        attr.span()
    };
    match (resource, action) {
        (Some(resource), Some(action)) => Ok(Args { resource, action }),
        (None, _) => Err(syn::Error::new(span, "missing argument `resource = \"...\"`")),
        (_, None) => Err(syn::Error::new(span, "missing argument `action = \"...\"`")),
    }
}

fn is_result(ty: &Type) -> bool {
    match ty {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident.to_string().ends_with("Result")),
        _ => false,
    }
}

fn last_segment_args<'a>(
    ty: &'a Type,
    name: &str,
) -> Option<&'a syn::punctuated::Punctuated<GenericArgument, Token![,]>> {
    let Type::Path(p) = ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != name {
        return None;
    }
    match &last.arguments {
        PathArguments::AngleBracketed(a) => Some(&a.args),
        _ => None,
    }
}

/// `Pin<Box<dyn Future<Output = R> + ..>>` → `R`: the return type rmcp's
/// `#[tool]` gives an `async fn` when it expands first.
fn boxed_future_output(ty: &Type) -> Option<&Type> {
    let GenericArgument::Type(boxed) = last_segment_args(ty, "Pin")?.first()? else {
        return None;
    };
    let GenericArgument::Type(Type::TraitObject(object)) = last_segment_args(boxed, "Box")?.first()? else {
        return None;
    };
    object.bounds.iter().find_map(|bound| match bound {
        TypeParamBound::Trait(t) => {
            let future = t.path.segments.last().filter(|s| s.ident == "Future")?;
            let PathArguments::AngleBracketed(args) = &future.arguments else {
                return None;
            };
            args.args.iter().find_map(|a| match a {
                GenericArgument::AssocType(assoc) if assoc.ident == "Output" => Some(&assoc.ty),
                _ => None,
            })
        }
        _ => None,
    })
}

/// The `async move { .. }` inside `{ Box::pin(async move { .. }) }`.
fn boxed_async_body(function: &mut ItemFn) -> Option<&mut ExprAsync> {
    let [Stmt::Expr(Expr::Call(call), None)] = function.block.stmts.as_mut_slice() else {
        return None;
    };
    let Expr::Path(func) = call.func.as_ref() else {
        return None;
    };
    let names: Vec<String> = func.path.segments.iter().map(|s| s.ident.to_string()).collect();
    if names.len() < 2 || names[names.len() - 2] != "Box" || names[names.len() - 1] != "pin" || call.args.len() != 1 {
        return None;
    }
    match call.args.first_mut() {
        Some(Expr::Async(body)) if body.capture.is_some() => Some(body),
        _ => None,
    }
}

/// Expand, or return the error to report.
pub(crate) fn try_expand(attr: TokenStream, function: &ItemFn) -> syn::Result<TokenStream> {
    let args = parse_args(attr)?;
    let Args { resource, action } = args;
    let check = quote_spanned! {resource.span()=>
        ::rmcp_guard::policy::require_permission(#resource, ::rmcp_guard::policy::Action::custom(#action), ::core::option::Option::None).await?;
    };
    let output = match &function.sig.output {
        ReturnType::Type(_, ty) => Some(ty.as_ref()),
        ReturnType::Default => None,
    };
    let wrong_return = |span| {
        syn::Error::new(
            span,
            "#[require_permission] needs a return type `Result<_, E>` where `E: From<rmcp::ErrorData>`, \
             so a denial can be returned",
        )
    };
    let no_return_span = function.sig.paren_token.span.close();

    // Only the body changes: attributes, visibility, modifiers and the
    // signature rmcp's `#[tool_router]` sees stay exactly as written.
    let mut out = function.clone();
    if function.sig.asyncness.is_some() {
        let output = output.ok_or_else(|| wrong_return(no_return_span))?;
        if !is_result(output) {
            return Err(wrong_return(output.span()));
        }
        let block = &function.block;
        *out.block = syn::parse_quote!({ #check #block });
        return Ok(quote!(#out));
    }
    // `#[tool]` above `#[require_permission]` expanded first and turned the
    // `async fn` into `fn .. -> Pin<Box<dyn Future<Output = R>>>` returning
    // `Box::pin(async move { .. })`: check inside that async block.
    if let Some(inner) = output.and_then(boxed_future_output) {
        if !is_result(inner) {
            return Err(wrong_return(inner.span()));
        }
        if let Some(body) = boxed_async_body(&mut out) {
            let block = &body.block;
            body.block = syn::parse_quote!({ #check #block });
            return Ok(quote!(#out));
        }
    }
    Err(syn::Error::new(
        function.sig.fn_token.span(),
        "#[require_permission] needs an `async fn`: the policy check is awaited before the body",
    ))
}

/// The entry point: on error, the original item is emitted with the error so
/// IDEs and the rest of the crate keep working.
pub(crate) fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let function = match syn::parse2::<ItemFn>(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[require_permission] goes on an `async fn` tool method",
            )
            .to_compile_error();
            return quote! { #item #error };
        }
    };
    match try_expand(attr, &function) {
        Ok(tokens) => tokens,
        Err(error) => {
            let error = error.to_compile_error();
            quote! { #function #error }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand_str(attr: &str, item: &str) -> String {
        expand(attr.parse().unwrap(), item.parse().unwrap()).to_string()
    }

    #[test]
    fn check_comes_before_the_body_and_the_signature_is_kept() {
        let out = expand_str(
            r#"resource = "catalyst-center", action = "write""#,
            "#[doc = \"x\"] pub async fn deploy(&self, Parameters(a): Parameters<A>) -> Result<String, ErrorData> { body(a) }",
        );
        let expected = quote! {
            #[doc = "x"]
            pub async fn deploy(&self, Parameters(a): Parameters<A>) -> Result<String, ErrorData> {
                ::rmcp_guard::policy::require_permission("catalyst-center", ::rmcp_guard::policy::Action::custom("write"), ::core::option::Option::None).await?;
                { body(a) }
            }
        }
        .to_string();
        assert_eq!(out, expected);
    }

    #[test]
    fn after_rmcp_tool_the_check_goes_inside_the_boxed_future() {
        // What rmcp's `#[tool]` makes of an `async fn` when it expands first.
        let out = expand_str(
            r#"resource = "github", action = "read""#,
            "fn list(&self) -> ::std::pin::Pin<Box<dyn ::std::future::Future<Output = Result<String, ErrorData>> + Send + '_>> \
             { Box::pin(async move { Ok(String::new()) }) }",
        );
        let expected = quote! {
            fn list(&self) -> ::std::pin::Pin<Box<dyn ::std::future::Future<Output = Result<String, ErrorData>> + Send + '_>> {
                Box::pin(async move {
                    ::rmcp_guard::policy::require_permission("github", ::rmcp_guard::policy::Action::custom("read"), ::core::option::Option::None).await?;
                    { Ok(String::new()) }
                })
            }
        }
        .to_string();
        // Token spacing (`>>` vs `> >`) is not meaningful: compare without spaces.
        assert_eq!(out.replace(' ', ""), expected.replace(' ', ""));
        // A boxed future of something that is not a Result is refused.
        let f: ItemFn = syn::parse_str(
            "fn t(&self) -> Pin<Box<dyn Future<Output = String> + Send>> { Box::pin(async move { String::new() }) }",
        )
        .unwrap();
        assert!(try_expand(r#"resource = "a", action = "b""#.parse().unwrap(), &f).is_err());
    }

    #[test]
    fn misuse_is_reported() {
        let f: ItemFn = syn::parse_str("async fn t(&self) -> Result<(), E> {}").unwrap();
        let err = |attr: &str| try_expand(attr.parse().unwrap(), &f).unwrap_err().to_string();
        assert_eq!(err(r#"resource = "a""#), "missing argument `action = \"...\"`");
        assert_eq!(err(r#"action = "a""#), "missing argument `resource = \"...\"`");
        assert!(err(r#"resource = "a", action = "b", scope = "c""#).starts_with("unknown argument `scope`"));
        assert_eq!(
            err(r#"resource = "a", resource = "b", action = "c""#),
            "duplicate argument `resource`"
        );
        assert_eq!(
            err(r#"resource = a, action = "c""#),
            "`resource` takes a string literal"
        );
        assert_eq!(err(r#"resource = "", action = "c""#), "`resource` must not be empty");
        let sync: ItemFn = syn::parse_str("fn t(&self) -> Result<(), E> {}").unwrap();
        assert!(try_expand(r#"resource = "a", action = "b""#.parse().unwrap(), &sync).is_err());
        let plain: ItemFn = syn::parse_str("async fn t(&self) -> String { todo() }").unwrap();
        assert!(try_expand(r#"resource = "a", action = "b""#.parse().unwrap(), &plain).is_err());
    }
}
